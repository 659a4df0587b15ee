#!/usr/bin/env bash
# Creates .venv at the repository root and installs solver-ppo into it (CPU torch 2.13.0), editable:
# the `solver_ppo` name maps onto app/ and callbacks/ of this checkout.
#   bash tools/setup.sh           the training stack (what the quick start needs)
#   bash tools/setup.sh --tests   and what the tests need: pytest, the W&B and MLflow loggers, Hypothesis, HiGHS
# Idempotent: re-running after pyproject.toml is unchanged costs about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=train
case "${1:-}" in
  "") ;;
  --tests) extras=train,dev ;;
  *) echo "usage: bash tools/setup.sh [--tests]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.solver-ppo-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)
# up to date when pyproject.toml is unchanged and what was installed covers what is asked
if [ "$have" != "$want train,dev" ] && [ "$have" != "$want $extras" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  # torch first and alone, so pip takes the CPU wheel rather than a multi-GB CUDA build.
  .venv/bin/pip install --quiet "torch==2.13.0"
  .venv/bin/pip install --quiet -e ".[$extras]"
  echo "$want $extras" > "$stamp"
fi
