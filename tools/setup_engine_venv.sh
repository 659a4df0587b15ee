#!/usr/bin/env bash
# Creates .venv-engines at the repository root: TRL 1.16.0 (GRPOTrainer) and OpenRLHF 0.11.0's
# reward and agent executors, with solver-ppo installed into it the way an engine's user does:
# `pip install .` (no extras), which must leave the engine's torch and transformers as they were.
#
# OpenRLHF goes in with --no-deps: it requires flash-attn and deepspeed, which do not install on a
# CPU machine; its reward/agent executors (openrlhf.utils.agent) import only torch, transformers,
# aiohttp, sympy and pylatexenc. veRL 0.9 is not installed: its reward managers import
# verl.protocol (ray, tensordict built against another torch); tests/engines/ drives the veRL
# adapters through the signatures its reward managers call (see docs/integrations.md).
# Idempotent: a second run with the same script and pyproject.toml only re-checks the versions.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=${ENGINE_VENV:-.venv-engines}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip=(nice "$VENV/bin/pip" install --quiet)
stamp=$VENV/.engines-installed
want=$(cat "$0" | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "${pip[@]}" --upgrade pip
  # torch first and alone: the CPU wheel, not a multi-GB CUDA build.
  "${pip[@]}" "torch==2.13.0"
  "${pip[@]}" \
    "trl==1.16.0" "transformers==5.24.0" "tokenizers==0.23.3" "accelerate==1.15.0" \
    "datasets==5.2.0" "huggingface_hub==2.4.0" "safetensors==0.8.0" "numpy==2.4.6" "pyarrow==26.0.1" \
    "pandas==3.1.1" "pylatexenc==2.10" "pytest==9.2.0"
  "${pip[@]}" --no-deps "openrlhf==0.11.0"
  echo "$want" > "$stamp"
fi
before=$("$VENV/bin/python" -c "import torch, transformers; print(torch.__version__, transformers.__version__)")
# solver-ppo itself, as a user installs it into an engine's environment (a copy, not editable)
"${pip[@]}" --force-reinstall --no-deps .
"${pip[@]}" .
after=$("$VENV/bin/python" -c "import torch, transformers; print(torch.__version__, transformers.__version__)")
if [ "$before" != "$after" ]; then
  echo "setup_engine_venv.sh: installing solver-ppo changed torch/transformers from $before to $after" >&2
  exit 1
fi
echo "engines venv: torch/transformers $after (unchanged by pip install .)"
