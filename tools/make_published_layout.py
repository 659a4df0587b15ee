"""Write a checkpoint directory in the published layout of chatglm3-6b or glm-4-9b-chat, with seeded random weights.

    .venv/bin/python tools/make_published_layout.py chatglm3-6b OUT_DIR [--seed 0] [--shards N] [--layers N]

chatglm3-6b: config.json, 7 float16 `pytorch_model-0000N-of-00007.bin` + `pytorch_model.bin.index.json`
(12.5 GB), SentencePiece tokenizer.model. glm-4-9b-chat: 10 bfloat16 `model-000NN-of-00010.safetensors`
+ `model.safetensors.index.json` (18.8 GB), tiktoken tokenizer.model. One shard in memory at a time.
`--layers` keeps the published widths with fewer layers (a quick check of the same files).
It loads like the real directory: `load_model(ModelConfig(family="chatglm", path=OUT_DIR))`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solver_ppo.models.layouts import LAYOUTS, checkpoint_bytes, write_published_layout  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(LAYOUTS))
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shards", type=int, default=None, help="weight files (default: the published count)")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than published, same widths")
    args = parser.parse_args(argv)
    out = Path(args.out_dir).resolve()
    if out.exists() and any(out.iterdir()):
        parser.error(f"{out} exists and is not empty; choose a new directory")
    layout = LAYOUTS[args.model]
    overrides = {"num_layers": args.layers} if args.layers else None
    need = checkpoint_bytes(layout.config | (overrides or {}))
    free = shutil.disk_usage(next(p for p in [out, *out.parents] if p.exists())).free
    if free < need:
        parser.error(f"{free / 1e9:.1f} GB free on the disk of {out}; the layout needs {need / 1e9:.1f} GB")
    t0 = time.perf_counter()
    try:
        write_published_layout(out, args.model, seed=args.seed, shards=args.shards, overrides=overrides,
                               progress=lambda line: print(line, flush=True))  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
