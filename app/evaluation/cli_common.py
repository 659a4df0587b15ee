"""Shared pieces of the evaluation commands: reading files, limit options."""

from __future__ import annotations

import argparse
from pathlib import Path

from solver_ppo.errors import UserError
from solver_ppo.evaluation.config import EvaluationConfig, MatchRule, SolverLimits
from solver_ppo.evaluation.model import Model, ModelReadError, read_model


def read_text(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"file not found: {path}")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}); convert it to UTF-8") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None


def read_model_file(path: str) -> Model:
    try:
        return read_model(read_text(path))
    except ModelReadError as err:
        raise UserError(f"{path}: {err}") from None


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    d = SolverLimits()
    parser.add_argument("--workers", type=int, default=EvaluationConfig().workers, help="solver worker processes")
    parser.add_argument("--time-limit", type=float, default=d.time_limit_s, help="SCIP time limit per solve (s)")
    parser.add_argument("--wall-limit", type=float, default=d.wall_limit_s, help="a worker is killed past this (s)")


def config_from_args(args: argparse.Namespace) -> EvaluationConfig:
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.time_limit <= 0 or args.wall_limit <= 0:
        raise UserError("--time-limit and --wall-limit must be positive")
    match = MatchRule()
    if getattr(args, "match", None):
        match.kind = args.match
    if getattr(args, "tolerance", None) is not None:
        if args.tolerance < 0:
            raise UserError(f"--tolerance must be >= 0, got {args.tolerance}")
        match.tolerance = args.tolerance
    limits = SolverLimits(time_limit_s=args.time_limit, wall_limit_s=max(args.wall_limit, args.time_limit + 1.0))
    return EvaluationConfig(limits=limits, match=match, workers=args.workers)
