"""`python -m app score --data PROBLEMS.jsonl --answers ANSWERS.jsonl [--out FILE]`.

Problems: JSONL with `id`, `question`, `answer` (number or "infeasible"; also `en_answer`,
`Answer`, or OptiBench's `results` dict) and optional `reference_model` (LP/MPS text). Answers:
JSONL with `id` and `answer` (or `response` / `output` / `text`), matched by id, else by order.
With --feedback each row also carries the message a policy would read about its answer
(app/evaluation/feedback.py) and, for an infeasible model, an irreducible infeasible subset.
Every row says whether its answer's own verdict exposes it (`exposed`: null on a matching row),
and the summary counts the exposed and the silent wrong answers (app/evaluation/summary.py).

With --labels votes the answers sharing an `id` are one group (a model's samples for that problem)
and vote the problem's label (app/evaluation/votes.py): the problems' answers are never read for
the reward, only to say how often the label is right; each row adds the `label` its group voted
(null where it has none). This is how a dataset of problems without answers gets its labels.
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
from solver_ppo.evaluation.votes import GroupVote, label_groups, same_answer

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
    parser.add_argument("--labels", choices=["reference", "votes"], default="reference",
                        help="reward against the problems' answers (reference), or against the label each problem's "
                             "answers vote for (votes: rows sharing an id are one group; answers are only compared)")
    parser.add_argument("--vote-share", type=float, help="votes: the plurality's least share of accepted votes (default 0.5)")
    parser.add_argument("--vote-min", type=int, help="votes: the plurality's least number of votes (default 2)")
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


def _answer_of(path: str, lineno: int, row: dict) -> Reference | None:
    """A problem's answer where the problems file has one (votes: only compared with the label)."""
    if not any(k in row for k in (*_ANSWER_KEYS, "results")):
        return None
    reference = _reference(path, lineno, row)
    return reference if reference.expected is not None else None


def _groups(args: argparse.Namespace, problems: list[tuple[int, dict]], answers: list[tuple[int, dict]]) -> list[str]:
    """votes: the problem id of each answer row (its group)."""
    known = {str(row.get("id", k)) for k, (_, row) in enumerate(problems)}
    ids = []
    for lineno, row in answers:
        if "id" not in row:
            raise UserError(f"{args.answers}:{lineno}: no 'id': with --labels votes each answer names its problem, "
                            "and the answers that share an id vote together")
        if str(row["id"]) not in known:
            raise UserError(f"{args.answers}:{lineno}: id {row['id']!r} is not a problem of {args.data}")
        ids.append(str(row["id"]))
    return ids


def _run_votes(args: argparse.Namespace, config, problems: list[tuple[int, dict]], answers: list[tuple[int, dict]]) -> int:
    ids = _groups(args, problems, answers)
    items = [(_response(args.answers, lineno, row), Reference()) for lineno, row in answers]
    with EvaluatorPool(config) as pool, progress_bar(total=len(items), desc="score", unit="answer") as bar:
        results = pool.score_many(items, bar.update)
    rescored, votes = label_groups(results, ids, config)
    truths = {str(row.get("id", k)): _answer_of(args.data, lineno, row) for k, (lineno, row) in enumerate(problems)}
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        for item_id, r in zip(ids, rescored):
            label = votes[item_id].label
            print(json.dumps({"id": item_id, **result_row(r, args.feedback),
                              "label": None if label is None else label.expected}), file=out)
    finally:
        if args.out:
            out.close()
    summary = _summary(ids, rescored) + "\n" + _vote_summary(votes, truths, config.match)
    print(summary, file=sys.stdout if args.out else sys.stderr)
    return 0


def _vote_summary(votes: dict[str, GroupVote], truths: dict[str, Reference | None], match) -> str:
    labelled = [key for key, v in votes.items() if v.label is not None]
    checked = [key for key in labelled if truths.get(key) is not None]
    right = sum(same_answer(votes[key].label, truths[key], match) for key in checked)
    accuracy = f"{right / len(checked):.3f}  ({right} of {len(checked)} labelled groups with an answer)" if checked else \
        "—  (no labelled group's problem has an answer)"
    return "\n".join([
        f"groups              {len(votes)}",
        f"labelled groups     {len(labelled)}  ({len(labelled) / len(votes):.3f})",
        f"label accuracy      {accuracy}",
    ])


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    config.feedback = args.feedback
    problems = _jsonl(args.data)
    answers = _jsonl(args.answers)
    if args.labels == "votes":
        config.labels = "votes"
        if args.vote_share is not None:
            if not 0 < args.vote_share <= 1:
                raise UserError(f"--vote-share {args.vote_share} must be in (0, 1]")
            config.votes.share = args.vote_share
        if args.vote_min is not None:
            if args.vote_min < 1:
                raise UserError(f"--vote-min {args.vote_min} must be at least 1")
            config.votes.min_votes = args.vote_min
        return _run_votes(args, config, problems, answers)
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
            print(json.dumps({"id": item_id, **result_row(r, args.feedback)}), file=out)
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
           "breakdown": {k: round(v, 6) for k, v in r.breakdown.items()}, "solve_seconds": round(r.solve_seconds, 6), "reason": r.reason,
           "exposed": exposed(r)}
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
