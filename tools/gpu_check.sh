#!/usr/bin/env bash
# One command on a CUDA machine: chatglm3-6b at its published shapes in bf16 on the GPU, end to end
# (tools/real_size_check.py --device gpu: layout, load, 2 PPO steps, checkpoint, resume, export,
# logits compare, peak GPU memory against app/models/memory.py), then the generation benchmark
# (tools/bench_generation.py: native decoding vs transformers' generate, decode rate as a fraction
# of the memory-bandwidth bound). Ends with one JSON line. Budget: under 10 minutes on one H100.
#
#   bash tools/device_wheels.sh      # here, with network: the pinned wheels into .whl/
#   bash tools/gpu_check.sh          # there: installs .whl/ into /tmp/site when present
#
# Logs and the two tools' outputs go to $OUT (default /tmp/gpu_check).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_check}
WORK=${WORK:-/tmp/gpu_check_work}
mkdir -p "$OUT"
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check: no CUDA device")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

start=$(date +%s)
set +e
timeout 420 "$PY" tools/real_size_check.py chatglm3-6b --device gpu --work "$WORK" 2>"$OUT/real_size.err" | tee "$OUT/real_size.txt"
timeout 150 "$PY" tools/bench_generation.py --repeats 1 --threads 0 2>"$OUT/bench_generation.err" | tee "$OUT/bench_generation.txt"
set -e
rm -rf "$WORK"

"$PY" - "$OUT" "$start" <<'PY'
import json, sys, time
from pathlib import Path

out, start = Path(sys.argv[1]), int(sys.argv[2])


def last_json(name):
    lines = [l for l in (out / name).read_text().splitlines() if l.startswith("{")] if (out / name).is_file() else []
    return json.loads(lines[-1]) if lines else {"completed": False, "error": f"no result line in {name}"}


real, bench = last_json("real_size.txt"), last_json("bench_generation.txt")
print(json.dumps({"gpu": (out / "gpu.txt").read_text().strip(), "seconds": round(time.time() - start),
                  "real_size": real, "generation": {k: v for k, v in bench.items() if k.startswith("gpu")}}))
PY
