#!/usr/bin/env bash
# Creates .venv-trl at the repository root: TRL 0.9.6, the baseline of tools/bench_ppo.py.
#
# TRL is only a benchmark baseline, never a dependency of the app, so it lives in its own venv:
# TRL 0.9.6 imports only with numpy<2, pyarrow<17 and datasets<3 (the app's venv has numpy 2),
# and its PPOConfig needs rich, which it does not declare. The solver stack (pyscipopt, networkx,
# scipy) is installed too, so the TRL side scores its responses with the same solver_ppo.evaluation code
# as ours. Idempotent: a second run is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv-trl/bin/python ]; then
  "$PY" -m venv .venv-trl
fi
stamp=.venv-trl/.bench-trl-installed
want=$(sha256sum "$0" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv-trl/bin/pip install --quiet --upgrade pip
  # torch first and alone: the CPU wheel on this machine's disk, not a multi-GB CUDA build.
  .venv-trl/bin/pip install --quiet "torch==2.13.0"
  .venv-trl/bin/pip install --quiet \
    "trl==0.9.6" "transformers==4.40.0" "tokenizers==0.19.1" "peft==0.13.2" "accelerate==1.15.0" \
    "numpy==1.26.4" "pyarrow==16.1.0" "datasets==2.21.0" "rich==15.0.0" "tyro==1.0.17" \
    "pyscipopt==6.3.0" "networkx==3.6.1" "scipy==1.17.1"
  echo "$want" > "$stamp"
fi
.venv-trl/bin/python -c "import trl, transformers, numpy; print('trl', trl.__version__, 'transformers', transformers.__version__, 'numpy', numpy.__version__)"
