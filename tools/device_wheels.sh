#!/usr/bin/env bash
# Wheels for a GPU machine without network access whose image has Python 3.12
# with torch, lightning, torchmetrics, numpy, safetensors, sentencepiece, accelerate, networkx,
# tensorboard and matplotlib, but transformers 5.x, a newer huggingface-hub and no pyscipopt or
# omegaconf. This fetches, here, the cp312 manylinux wheels of the pins that differ, into .whl/
# (git-ignored through .git/info/exclude). On the GPU machine, carry .whl and start with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl
PY=${PYTHON:-.venv/bin/python}
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  transformers==4.40.0 tokenizers==0.19.1 huggingface-hub==0.36.2 peft==0.13.2 pyscipopt==6.3.0 omegaconf==2.4.0
ls -1 .whl
du -sh .whl
