"""`python -m app evaluate-model FILE [FILE ...]`: solve each LP/MPS file, or the model each
solver-library program (.py) builds (run in the sandbox), one JSON line per file."""

from __future__ import annotations

import argparse
import json
import sys

from solver_ppo.evaluation.cli_common import add_limit_arguments, config_from_args, read_text
from solver_ppo.evaluation.pool import EvaluatorPool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="LP or MPS model files (format sniffed), or .py programs "
                        "using pyscipopt, gurobipy, coptpy, pyomo, pulp or scipy")
    add_limit_arguments(parser)


def run(args: argparse.Namespace) -> int:
    texts = [read_text(path) for path in args.files]
    is_code = [path.endswith(".py") for path in args.files]
    with EvaluatorPool(config_from_args(args)) as pool:
        models = iter(pool.solve_many([t for t, c in zip(texts, is_code) if not c]))
        programs = iter(pool.solve_code_many([t for t, c in zip(texts, is_code) if c]))
        results = [next(programs) if c else next(models) for c in is_code]
    for path, r in zip(args.files, results):
        row = {"file": path, "status": r.status, "objective": r.objective, "n_vars": r.n_vars, "n_cons": r.n_cons,
               "solve_seconds": round(r.solve_seconds, 6), "reason": r.reason}
        print(json.dumps(row), file=sys.stdout)
    return 0
