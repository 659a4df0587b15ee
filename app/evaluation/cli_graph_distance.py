"""`python -m app graph-distance A B` or `--pairs PAIRS.tsv`: one JSON line per pair."""

from __future__ import annotations

import argparse
import json

from solver_ppo.errors import UserError
from solver_ppo.evaluation.cli_common import read_model_file, read_text
from solver_ppo.evaluation.graph import equivalent, graph_distance


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL", help="two LP/MPS files")
    parser.add_argument("--pairs", help="TSV file: two model paths per line, tab-separated")


def run(args: argparse.Namespace) -> int:
    if args.pairs:
        if args.models:
            raise UserError("give either two model files or --pairs, not both")
        pairs = []
        for lineno, line in enumerate(read_text(args.pairs).splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2:
                raise UserError(f"{args.pairs}:{lineno}: expected two tab-separated paths, got {len(parts)} field(s)")
            pairs.append((parts[0].strip(), parts[1].strip()))
    elif len(args.models) == 2:
        pairs = [tuple(args.models)]
    else:
        raise UserError(f"give two model files (got {len(args.models)}) or --pairs PAIRS.tsv")
    for a, b in pairs:
        ma, mb = read_model_file(a), read_model_file(b)
        print(json.dumps({"a": a, "b": b, "distance": graph_distance(ma, mb), "equivalent": equivalent(ma, mb)}))
    return 0
