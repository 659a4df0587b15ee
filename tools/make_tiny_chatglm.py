"""Write a tiny ChatGLM checkpoint directory (config.json, model.safetensors, trained tokenizer).

    .venv/bin/python tools/make_tiny_chatglm.py OUT_DIR [--variant chatglm3|glm4] [--layers 2 --hidden 64 ...]
        [--corpus FILE ...] [--skip-keys KEY ...] [--vocab-size N] [--seed S]

It loads like a real checkpoint: `load_model(ModelConfig(family="chatglm", path=OUT_DIR))`.
A corpus file is read line by line; a JSONL line contributes its string values, except those
under --skip-keys.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solver_ppo.models.tiny import VARIANTS, make_tiny_chatglm  # noqa: E402


def read_corpus(paths: list[str], skip_keys: frozenset[str] = frozenset()) -> list[str]:
    lines = []
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                lines.extend(v for k, v in record.items() if k not in skip_keys and isinstance(v, str) and v.strip())
            else:
                lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--variant", choices=VARIANTS, default="chatglm3")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-groups", type=int, default=2)
    parser.add_argument("--ffn", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=512, help="the model's padded vocabulary")
    parser.add_argument("--corpus", nargs="+", default=None, help="text/JSONL files to train the tokenizer on")
    parser.add_argument("--skip-keys", nargs="+", default=[],
                        help="JSONL keys whose values the tokenizer does not learn from (e.g. demonstration: the "
                             "vocabulary is the problems', not one teacher's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    missing = [p for p in args.corpus or [] if not Path(p).is_file()]
    if missing:
        parser.error(f"corpus file not found: {', '.join(missing)}")
    corpus = read_corpus(args.corpus, frozenset(args.skip_keys)) if args.corpus else None
    if corpus is not None and not corpus:
        parser.error("the corpus files contain no text")
    try:
        out = make_tiny_chatglm(args.out_dir, variant=args.variant, num_layers=args.layers, hidden_size=args.hidden,
                                num_heads=args.heads, kv_groups=args.kv_groups, ffn_hidden_size=args.ffn,
                                vocab_size=args.vocab_size, corpus=corpus, seed=args.seed)  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
