"""How much revising after the feedback could add: which wrong first answers the feedback exposes.

    .venv/bin/python -m app eval --model checkpoints/quickstart-sft-revisions --data logs/quickstart/data/heldout.jsonl \
        --turns 2 --end done --out rows.jsonl [--adapter RUN/trainable.pt]
    .venv/bin/python tools/revision_headroom.py rows.jsonl --data logs/quickstart/data/heldout.jsonl

The feedback never looks at the reference, so a wrong model can only be revised on purpose when
its own verdict exposes it (solver_ppo.evaluation.summary.exposure: no error-free solve, or a solve
where every variable is 0; `eval --turns` and `score` print those counts too). A wrong model that
solves to a nonzero optimum gets feedback a right one could get too. acc@K - acc@1 can therefore
not exceed the share of exposed wrong first answers. The unexposed ones are compared with the reference model (LP and MPS answers)
to say what is wrong in them: a number, a sense, the rows, or only bounds and integrality. With
multi-turn rows, each class also shows what the later turns did: kept the first model (said done
every time) or revised it, and whether the model standing at the end is right.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solver_ppo.data.formats import iter_problems  # noqa: E402
from solver_ppo.evaluation.extract import extract_model  # noqa: E402
from solver_ppo.evaluation.model import Model, ModelReadError, read_model  # noqa: E402

CLASSES = ("right", "wrong, no error-free solve", "wrong, every variable 0", "wrong, nonzero optimum")


def first_answer_class(turn: dict) -> str:
    """Which of CLASSES a first answer falls in, from its `exposed` field (written by `eval --turns`
    from solver_ppo.evaluation.summary.exposure, the one definition of what a verdict exposes)."""
    if turn["exposed"] is None:
        return CLASSES[0]
    if not turn["exposed"]:
        return CLASSES[3]
    return CLASSES[1] if turn["status"] != "optimal" else CLASSES[2]


def difference(answer: str, reference: str | None) -> str:
    """What separates an answer's model from the reference model, coarsest first."""
    found = extract_model(answer)
    if reference is None or found.status != "found" or found.fmt not in ("lp", "mps"):
        return "not compared (no reference model, or a code answer)"
    try:
        mine, ref = read_model(found.text, found.fmt), read_model(reference)
    except ModelReadError:
        return "not compared (unreadable)"
    if _rows(mine) != _rows(ref) or {v.name for v in mine.variables} != {v.name for v in ref.variables}:
        return "rows or variables differ"
    mine_rows, ref_rows = _by_name(mine), _by_name(ref)
    if mine.sense != ref.sense or any(mine_rows[k][1] != ref_rows[k][1] for k in ref_rows):
        return "a sense differs (objective or row)"
    if {v.name: v.obj for v in mine.variables} != {v.name: v.obj for v in ref.variables} or mine_rows != ref_rows:
        return "a number differs (objective, coefficient or right-hand side)"
    return "bounds or integrality differ"


def _rows(model: Model) -> set[str]:
    return {c.name for c in model.constraints}


def _by_name(model: Model) -> dict[str, tuple]:
    return {c.name: (c.coefs, c.sense, c.rhs) for c in model.constraints}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", help="`eval --turns K --out` rows (K >= 2: each row carries its turns and their feedback)")
    parser.add_argument("--data", required=True, help="the problems the rows answer (for the reference models)")
    args = parser.parse_args()
    rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines() if line.strip()]
    if not rows or "turns" not in rows[0] or "exposed" not in rows[0]["turns"][0]:
        print(f"error: {args.rows} has no per-turn rows with `exposed`; write them with `eval --turns 2 --out FILE`",
              file=sys.stderr)
        return 2
    references = {p.id: p.reference_model for p in iter_problems(args.data)}
    classes: collections.Counter = collections.Counter()
    outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    differences: collections.Counter = collections.Counter()
    revised_wrong: collections.Counter = collections.Counter()
    for row in rows:
        first, last = row["turns"][0], row["turns"][-1]
        kind = first_answer_class(first)
        classes[kind] += 1
        if len(row["turns"]) > 1:
            if all(turn.get("stands") for turn in row["turns"][1:]):  # every later turn said done: the first model stands
                outcomes[kind]["said done"] += 1
            elif last["matched"] and not first["matched"]:
                outcomes[kind]["revised: fixed"] += 1
            elif first["matched"] and not last["matched"]:
                outcomes[kind]["revised: broke"] += 1
            else:
                outcomes[kind]["revised: no change in rightness"] += 1
                if not last["matched"]:
                    revised_wrong[difference(last["response"], references.get(row["id"]))] += 1
        if kind == CLASSES[3]:
            differences[difference(first["response"], references.get(row["id"]))] += 1

    n = len(rows)
    print(f"First answers of {n} problems, by what their feedback shows:\n")
    print("| first answer | count | share | kept (said done) | revised: fixed | revised, still wrong or still right | revised: broke |")
    print("|---|---|---|---|---|---|---|")
    for kind in CLASSES:
        o = outcomes[kind]
        print(f"| {kind} | {classes[kind]} | {classes[kind] / n:.3f} | {o['said done']} | {o['revised: fixed']} | "
              f"{o['revised: no change in rightness']} | {o['revised: broke']} |")
    for title, counts in (("Wrong first answers with a nonzero optimum", differences),
                          ("Revisions that are still wrong", revised_wrong)):
        print(f"\n{title}, against the reference model:\n")
        print("| what differs | count |")
        print("|---|---|")
        for what, count in counts.most_common():
            print(f"| {what} | {count} |")
    exposed = classes[CLASSES[1]] + classes[CLASSES[2]]
    fixed = sum(outcomes[k]["revised: fixed"] for k in CLASSES)
    print(json.dumps({"problems": n, "accuracy_first": classes[CLASSES[0]] / n, "exposed_wrong": exposed,
                      "revision_ceiling_points": round(100 * exposed / n, 1), "fixed": fixed,
                      "unexposed_wrong": classes[CLASSES[3]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
