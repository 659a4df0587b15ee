#!/usr/bin/env bash
# Creates .venv at the repository root and installs solver-ppo into it (CPU torch 2.13.0).
# Idempotent: re-running after pyproject.toml is unchanged costs about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.solver-ppo-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  # torch first and alone, so pip takes the CPU wheel rather than a multi-GB CUDA build.
  .venv/bin/pip install --quiet "torch==2.13.0"
  .venv/bin/pip install --quiet -e ".[train,dev]"
  echo "$want" > "$stamp"
fi
