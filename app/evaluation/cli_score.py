"""`python -m app score --data PROBLEMS.jsonl --answers ANSWERS.jsonl [--out FILE]`.

Problems: JSONL with `id`, `question`, `answer` (number or "infeasible"; also `en_answer`,
`Answer`, or OptiBench's `results` dict) and optional `reference_model` (LP/MPS text). Answers:
JSONL with `id` and `answer` (or `response` / `output` / `text`), matched by id, else by order.
With --feedback each row also carries the message a policy would read about its answer
(app/evaluation/feedback.py) and, for an infeasible model, an irreducible infeasible subset.
Every row says whether its answer's own verdict exposes it (`exposed`: null on a matching row),
and the summary counts the exposed and the silent wrong answers (app/evaluation/summary.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from solver_ppo.errors import UserError
from solver_ppo.progress import progress_bar
from solver_ppo.evaluation.cli_common import add_limit_arguments, config_from_args, read_text
from solver_ppo.evaluation.feedback import feedback_message
from solver_ppo.evaluation.pool import EvaluatorPool
from solver_ppo.evaluation.reward import Reference, ScoreResult
from solver_ppo.evaluation.summary import exposed, format_headroom_table, headroom, summarize

_ANSWER_KEYS = ("answer", "en_answer", "Answer")
_RESPONSE_KEYS = ("answer", "response", "output", "text")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="problems JSONL")
    parser.add_argument("--answers", required=True, help="answers JSONL (by id, or in the problems' order)")
    parser.add_argument("--out", help="write per-item JSON lines here (default: stdout)")
    parser.add_argument("--match", choices=["abs_rel", "relative"], help="matching rule (default abs_rel)")
    parser.add_argument("--tolerance", type=float, help="matching tolerance (default 1e-6)")
    parser.add_argument("--feedback", action="store_true",
                        help="add to each row the feedback a policy reads about its answer ('feedback') and, for an "
                             "infeasible model, 'infeasible_subset' (constraint names as written, or 'row N')")
    add_limit_arguments(parser)


def _jsonl(path: str) -> list[tuple[int, dict]]:
    rows = []
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append((lineno, row))
    if not rows:
        raise UserError(f"{path}: no JSON lines")
    return rows


def _reference(path: str, lineno: int, row: dict) -> Reference:
    if isinstance(row.get("results"), dict):  # OptiBench: the first numeric value
        raw = next((v for v in row["results"].values() if isinstance(v, (int, float)) and not isinstance(v, bool)), None)
    else:
        raw = next((row[k] for k in _ANSWER_KEYS if k in row), None)
    model = row.get("reference_model")
    if raw is None and model is None:
        raise UserError(f"{path}:{lineno}: no reference: give 'answer' (or en_answer/Answer/results) or 'reference_model'")
    try:
        return Reference.from_answer(raw, model)
    except ValueError as err:
        raise UserError(f"{path}:{lineno}: {err}") from None


def _response(path: str, lineno: int, row: dict) -> str:
    for k in _RESPONSE_KEYS:
        if k in row:
            value = row[k]
            return value if isinstance(value, str) else json.dumps(value)
    raise UserError(f"{path}:{lineno}: no answer text: give one of {', '.join(_RESPONSE_KEYS)}")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    config.feedback = args.feedback
    problems = _jsonl(args.data)
    answers = _jsonl(args.answers)
    ids = [str(row.get("id", k)) for k, (_, row) in enumerate(problems)]
    by_id = {str(row["id"]): (lineno, row) for lineno, row in answers if "id" in row}
    if len(by_id) == len(answers) and set(by_id) >= set(ids):
        paired = [by_id[i] for i in ids]
    elif len(answers) == len(problems):
        paired = answers
    else:
        raise UserError(f"{args.answers}: {len(answers)} answers for {len(problems)} problems, and their ids do not cover the problems")
    items = [(_response(args.answers, a_line, a_row), _reference(args.data, p_line, p_row)) for (p_line, p_row), (a_line, a_row) in zip(problems, paired)]
    with EvaluatorPool(config) as pool, progress_bar(total=len(items), desc="score", unit="answer") as bar:
        results = pool.score_many(items, bar.update)
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        for item_id, r in zip(ids, results):
            print(json.dumps({"id": item_id, **result_row(r, args.feedback), "exposed": exposed(r)}), file=out)
    finally:
        if args.out:
            out.close()
    print(_summary(ids, results), file=sys.stdout if args.out else sys.stderr)
    print(_headroom(problems, results), file=sys.stdout if args.out else sys.stderr)
    return 0


def _headroom(problems: list[tuple[int, dict]], results: list[ScoreResult]) -> str:
    """The revision headroom table: all answers, then one row per family where the problems name one."""
    groups: dict[str, list[ScoreResult]] = {"all": list(results)}
    for (_, row), r in zip(problems, results):
        if "family" in row:
            groups.setdefault(str(row["family"]), []).append(r)
    return ("\nRevision headroom: among the answers that do not match, those whose own verdict exposes them "
            "(the most a feedback run can repair) and the silent ones (a nonzero optimum):\n\n"
            + format_headroom_table({name: headroom(group) for name, group in groups.items()}))


def result_row(r: ScoreResult, feedback: bool = False) -> dict:
    """One scored answer as `score` writes it (less the id); the engine adapters and the reward
    server give exactly these values."""
    row = {"reward": round(r.reward, 6), "status": r.status, "objective": r.objective, "expected": r.expected,
           "matched": r.matched, "graph_distance": r.graph_distance, "final_answer": r.final_answer,
           "breakdown": {k: round(v, 6) for k, v in r.breakdown.items()}, "solve_seconds": round(r.solve_seconds, 6), "reason": r.reason}
    if feedback:
        row["feedback"] = feedback_message(r)
        if r.status == "infeasible":
            row["infeasible_subset"] = r.infeasible_subset
    return row


def _summary(ids: list[str], results: list) -> str:
    n = len(results)
    graphs = [r.graph_distance for r in results if r.graph_distance is not None]
    lines = [f"{'id':<14} {'status':<12} {'reward':>6}  reason", "-" * 72]
    lines += [f"{i[:14]:<14} {r.status:<12} {r.reward:>6.3f}  {r.reason[:60]}" for i, r in zip(ids, results)]
    lines.append("-" * 72)
    s = summarize(results)
    graph = "—" if s["graph_distance"] is None else f"{s['graph_distance']:.3f}"
    lines += [
        f"items               {n}",
        f"accuracy            {s['accuracy']:.3f}",
        f"solved rate         {s['solved_rate']:.3f}",
        f"format rate         {s['format_rate']:.3f}",
        f"mean graph distance {graph}  ({len(graphs)} with a reference model)",
        f"mean reward         {s['reward']:.3f}",
        "statuses            " + ", ".join(f"{k} {v}" for k, v in Counter(r.status for r in results).most_common()),
    ]
    return "\n".join(lines)
