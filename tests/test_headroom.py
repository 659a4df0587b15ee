"""Revision headroom: which wrong answers their own verdict exposes (the most feedback can repair).

Hand-built answers of every kind, scored for real (SCIP, the code sandbox): right, silent (a
miscopied number solves to a nonzero optimum), every variable 0, infeasible, unbounded, an
exception at a line, a syntax error, no solve call, no model; then `score`'s rows and table.
"""

from __future__ import annotations

import json

from solver_ppo.cli import main
from solver_ppo.evaluation import EvaluationConfig, Reference, score_answer
from solver_ppo.evaluation.summary import exposed, exposure, format_headroom_table, headroom


def lp(text: str) -> str:
    return f"```lp\n{text}\n```"


def code(text: str) -> str:
    return f"```python\nfrom pyscipopt import Model\n{text}\n```"


REFERENCE = 12.0  # min x + y subject to x + y >= 12
ANSWERS = {
    "right": lp("Minimize\n obj: x + y\nSubject To\n need: x + y >= 12\nEnd"),
    "silent": lp("Minimize\n obj: x + y\nSubject To\n need: x + y >= 21\nEnd"),  # 12 miscopied as 21
    "every variable 0": lp("Minimize\n obj: x + y\nSubject To\n need: x + y <= 12\nEnd"),  # requirement flipped
    "infeasible": lp("Minimize\n obj: x + y\nSubject To\n need: x + y >= 12\n cap: x + y <= 5\nEnd"),
    "unbounded": lp("Maximize\n obj: x + y\nSubject To\n need: x + y >= 12\nEnd"),
    "exception": code("m = Model()\nx = m.addVar('x')\nm.setObjective(x + data['y'])\nm.optimize()"),
    "syntax_error": code("m = Model()\nx = m.addVar('x'\nm.optimize()"),
    "no_solve": code("m = Model()\nx = m.addVar('x')\nm.addCons(x >= 12)"),
    "no_model": "The answer is 12.",
}


def test_each_kind_of_answer_is_exposed_or_silent_as_its_verdict_shows():
    config = EvaluationConfig()  # no feedback: exposure needs only the verdict and the nonzero count
    results = {name: score_answer(text, Reference(REFERENCE), config) for name, text in ANSWERS.items()}
    assert {name: exposure(r) for name, r in results.items()} == {
        "right": None, "silent": "silent", "every variable 0": "every variable 0", "infeasible": "infeasible",
        "unbounded": "unbounded", "exception": "exception", "syntax_error": "syntax_error", "no_solve": "no_solve",
        "no_model": "no_model"}
    assert [exposed(results[n]) for n in ("right", "silent", "unbounded")] == [None, False, True]
    counts = headroom(list(results.values()))
    assert {k: counts[k] for k in ("n", "wrong", "exposed", "silent")} == {"n": 9, "wrong": 8, "exposed": 7, "silent": 1}
    assert counts["exposed_share"] == 7 / 8 and sum(counts["exposed_by"].values()) == 7
    assert headroom([results["right"]])["exposed_share"] is None
    table = format_headroom_table({"all": counts})
    assert table.splitlines()[2].startswith("| all | 9 | 8 | 7 | 0.875 | 1 | every variable 0 1, infeasible 1, ")


def test_score_rows_say_exposed_and_the_table_counts_each_family(tmp_path, capsys):
    names = ["right", "silent", "every variable 0", "infeasible"]
    problems, answers, out = tmp_path / "problems.jsonl", tmp_path / "answers.jsonl", tmp_path / "rows.jsonl"
    problems.write_text("".join(json.dumps({"id": n, "question": "q", "answer": REFERENCE,
                                            "family": "diet" if i < 2 else "staffing"}) + "\n" for i, n in enumerate(names)))
    answers.write_text("".join(json.dumps({"id": n, "answer": ANSWERS[n]}) + "\n" for n in names))
    assert main(["score", "--data", str(problems), "--answers", str(answers), "--out", str(out), "--workers", "1"]) == 0
    rows = {row["id"]: row["exposed"] for row in map(json.loads, out.read_text().splitlines())}
    assert rows == {"right": None, "silent": False, "every variable 0": True, "infeasible": True}
    printed = capsys.readouterr().out
    assert "| all | 4 | 3 | 2 | 0.667 | 1 | every variable 0 1, infeasible 1 |" in printed
    assert "| diet | 2 | 1 | 0 | 0.000 | 1 | — |" in printed
    assert "| staffing | 2 | 2 | 2 | 1.000 | 0 | every variable 0 1, infeasible 1 |" in printed
