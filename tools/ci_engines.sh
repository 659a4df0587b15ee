#!/usr/bin/env bash
# CI's engine step (run by .ci/run after the main suite): builds .venv-engines (TRL 1.16, OpenRLHF
# 0.11's executors, solver-ppo installed with `pip install .`) and runs tests/engines in it.
# ENGINE_VENV moves the venv somewhere the machine keeps between runs (a cache directory).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_engine_venv.sh
VENV=${ENGINE_VENV:-.venv-engines}
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/engines
