#!/usr/bin/env bash
# Creates .venv-trl-grpo at the repository root: TRL 1.16.0 (GRPOTrainer), the baseline of tools/bench_grpo.py.
#
# TRL is only a benchmark baseline, never a dependency of the app, so it lives in its own venv:
# TRL 1.16 needs transformers>=4.56.2, datasets>=4.7 and pyarrow>=21, while the app's venv pins
# transformers 4.40. The pins below are what pip resolves for trl==1.16.0 today (the latest
# release), fixed so the baseline does not move under the benchmark. CPU torch, no vLLM: the
# benchmark compares both trainers' own generate loops. The solver stack (pyscipopt, networkx,
# scipy) is installed too, so the TRL side scores its completions with the same solver_ppo.evaluation
# code as ours. Idempotent: a second run is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv-trl-grpo/bin/python ]; then
  "$PY" -m venv .venv-trl-grpo
fi
stamp=.venv-trl-grpo/.bench-trl-grpo-installed
want=$(sha256sum "$0" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  pip=(nice .venv-trl-grpo/bin/pip install --quiet)
  "${pip[@]}" --upgrade pip
  # torch first and alone: the CPU wheel, not a multi-GB CUDA build.
  "${pip[@]}" "torch==2.13.0"
  "${pip[@]}" \
    "trl==1.16.0" "transformers==5.24.0" "tokenizers==0.23.3" "peft==0.21.2" "accelerate==1.15.0" \
    "datasets==5.2.0" "huggingface_hub==2.4.0" "safetensors==0.8.0" "numpy==2.4.6" "pyarrow==26.0.1" \
    "pandas==3.1.1" "pyscipopt==6.3.0" "networkx==3.6.1" "scipy==1.17.1"
  echo "$want" > "$stamp"
fi
.venv-trl-grpo/bin/python -c "import trl, transformers, torch; print('trl', trl.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
