"""`python -m app make-data`: synthetic modeling problems with reference models and optima.

Writes DIR/train.jsonl and DIR/heldout.jsonl (no (family, numbers) problem on both sides) and
prints how many problems of each family, sense and type each split holds. With --teacher-flip,
some training problems carry an imperfect teacher's SFT demonstration (see `imperfect_teacher`);
with --teacher-errors, a pyscipopt demonstration with an error of the kinds a real LLM makes
(see `erring_teacher` and `solver_ppo.data.teacher_errors`).
With --answer-format LIBRARY, every problem's demonstration is its model as a program in that
solver library (see `solver_ppo.data.code_answers`), so SFT teaches code answers. With --revisions,
some training problems are revision demonstrations: the teacher's first answer, the evaluation's
real feedback on it, and the reference as the corrected answer (see `revision_demonstrations`).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from solver_ppo.data.code_answers import ANSWER_FORMATS
from solver_ppo.data.synthetic import (DIFFICULTIES, DONE_REPLY, Item, check_answer_format, check_fraction,
                                code_demonstrations, erring_teacher, imperfect_teacher, make_splits,
                                revision_demonstrations, write_jsonl)
from solver_ppo.data.teacher_errors import KINDS, ORLM_MIX, parse_mix
from solver_ppo.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--train", type=int, default=2000, help="number of training problems (default 2000)")
    parser.add_argument("--heldout", type=int, default=200, help="number of held-out problems (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same files")
    parser.add_argument("--difficulty", default="easy",
                        help="easy | medium | hard, or a number in [0, 1] (0 = easy, 1 = hard); default easy")
    parser.add_argument("--families", default=None,
                        help="comma-separated subset of production,diet,transportation,assignment,knapsack,staffing")
    parser.add_argument("--infeasible", type=float, default=0.05,
                        help="fraction of problems made infeasible on purpose (default 0.05)")
    parser.add_argument("--teacher-flip", type=float, default=0.0,
                        help="fraction of the training problems with requirements (>= rows) whose SFT demonstration "
                             "writes them as upper bounds (<=): an imperfect teacher's systematic error; the reference "
                             "model and answer stay correct (default 0: demonstrations are the references)")
    parser.add_argument("--teacher-errors", type=float, default=0.0,
                        help="fraction of the feasible training problems whose pyscipopt demonstration carries one "
                             "error of a real LLM's kinds (exception at a line, infeasible, unbounded, every variable 0, "
                             "silent; see --teacher-error-mix); needs --answer-format pyscipopt (default 0)")
    parser.add_argument("--teacher-error-mix", default=None,
                        help="shares of the error kinds, as kind=weight,...: " + ", ".join(KINDS) + "; default: the mix of "
                             "verdicts among ORLM-LLaMA-3-8B's 228 wrong published answers (docs/evaluation.md), "
                             + ", ".join(f"{k}={w:.3g}" for k, w in ORLM_MIX.items()))
    parser.add_argument("--revisions", type=float, default=0.0,
                        help="fraction of the training problems written as revision demonstrations: the teacher's "
                             "answer (flawed where --teacher-flip or --teacher-errors made it so), the evaluation's "
                             "feedback on it, then "
                             "the reference answer as the SFT target (default 0)")
    parser.add_argument("--revisions-done", action="store_true",
                        help="in revision demonstrations whose first answer is sound (not flawed by --teacher-flip or --teacher-errors), "
                             f"the target is the done reply '{DONE_REPLY}' (no model: with rollout.end=done the first "
                             "model stands) instead of the model restated")
    parser.add_argument("--answer-format", default="lp",
                        help=f"{' | '.join(ANSWER_FORMATS)}: how the SFT demonstrations write the model: lp (default: "
                             "demonstrations left empty, SFT builds an ```lp answer from the reference) or a program in "
                             "that solver library in a ```python block; reference models stay LP")


def _difficulty(text: str) -> str | float:
    if text in DIFFICULTIES:
        return text
    try:
        return float(text)
    except ValueError:
        raise UserError(f"--difficulty must be easy, medium, hard or a number in [0, 1], got '{text}'") from None


def _table(splits: dict[str, list[Item]]) -> str:
    header = f"{'split':8} {'family':15} {'n':>6} {'max':>6} {'min':>6} {'LP':>6} {'MILP':>6} {'infeas':>6}"
    lines = [header, "-" * len(header)]
    for split, items in splits.items():
        by_family: dict[str, Counter] = {}
        for item in items:
            c = by_family.setdefault(item.family, Counter())
            c.update(["n", item.sense[:3], item.type, "infeasible" if item.answer == "infeasible" else ""])
        for family, c in [*by_family.items(), ("all", sum(by_family.values(), Counter()))]:
            lines.append(f"{split:8} {family:15} {c['n']:6d} {c['max']:6d} {c['min']:6d} "
                         f"{c['LP']:6d} {c['MILP']:6d} {c['infeasible']:6d}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.train < 0 or args.heldout < 0:
        raise UserError(f"--train and --heldout must be 0 or more, got {args.train} and {args.heldout}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    families = [f.strip() for f in args.families.split(",") if f.strip()] if args.families else None
    check_fraction("teacher's flip rate", args.teacher_flip)  # before minutes of solving, not after
    check_fraction("revision fraction", args.revisions)
    check_fraction("teacher's error rate", args.teacher_errors)
    if args.teacher_errors and args.teacher_flip:
        raise UserError("--teacher-flip and --teacher-errors are two teachers; give one of them")
    if args.teacher_error_mix and not args.teacher_errors:
        raise UserError("--teacher-error-mix sets the shares of --teacher-errors, which is 0: give --teacher-errors F too")
    mix = parse_mix(args.teacher_error_mix) if args.teacher_error_mix else ORLM_MIX
    if args.revisions_done and not args.revisions:
        raise UserError("--revisions-done changes revision demonstrations, and --revisions is 0: give --revisions F too")
    check_answer_format(args.answer_format)
    start = time.perf_counter()
    train, heldout = make_splits(args.train, args.heldout, args.seed, _difficulty(args.difficulty),
                                 families, args.infeasible)
    flipped = imperfect_teacher(train, args.seed, args.teacher_flip, args.answer_format)
    erred = erring_teacher(train, args.seed, args.teacher_errors, mix, args.answer_format)
    revisions = revision_demonstrations(train, args.seed, args.revisions, args.answer_format, done=args.revisions_done)
    for items in (train, heldout):
        code_demonstrations(items, args.answer_format)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    for name, items in (("train", train), ("heldout", heldout)):
        write_jsonl(out / f"{name}.jsonl", items)
    print(_table({"train": train, "heldout": heldout}))
    if flipped:
        print(f"{flipped} of {len(train)} training demonstrations write requirements as upper bounds (--teacher-flip)")
    if erred:
        print(f"{sum(erred.values())} of {len(train)} training demonstrations carry a teacher error (--teacher-errors): "
              + ", ".join(f"{kind} {n}" for kind, n in erred.most_common()))
    if revisions:
        print(f"{revisions} of {len(train)} training problems are revision demonstrations (--revisions)")
    print(f"wrote {len(train)} train and {len(heldout)} held-out problems to {out} in {seconds:.1f} s")
    return 0
