"""`python -m app export`: merge a trained LoRA adapter into its base, write a loadable checkpoint."""

from __future__ import annotations

import argparse

from solver_ppo.models.export import DTYPES, export


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="base checkpoint directory (the one training started from)")
    parser.add_argument("--adapter", required=True, help="trainable.pt written by training, or a directory holding it")
    parser.add_argument("--out", required=True, help="new directory for the merged checkpoint")
    parser.add_argument("--family", default="chatglm", choices=["chatglm", "auto"],
                        help="how to load the base: native ChatGLM (default) or AutoModelForCausalLM")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="dtype to merge and save in (default: the base's torch_dtype)")
    parser.add_argument("--format", dest="serialization", choices=["safetensors", "bin"], default="safetensors",
                        help="safetensors shards (default) or pytorch_model-*.bin shards as chatglm3 ships")
    parser.add_argument("--max-shard-size", default="5GB", help="largest weight file before sharding (e.g. 2GB)")


def run(args: argparse.Namespace) -> int:
    out = export(
        args.model, args.adapter, args.out, family=args.family, dtype=args.dtype,
        serialization=args.serialization, max_shard_size=args.max_shard_size,
    )
    print(f"wrote {out}")
    return 0
