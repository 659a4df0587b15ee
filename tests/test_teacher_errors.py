"""The erring teacher: each error kind gets the verdict it is meant to (real SCIP, the real code
sandbox), and make-data's revision demonstrations carry the feedback `score --feedback` gives the
flawed program."""

from __future__ import annotations

import json
import random

import pytest

from solver_ppo.cli import main
from solver_ppo.data.synthetic import generate
from solver_ppo.data.teacher_errors import KINDS, ORLM_MIX, flawed_answer, parse_mix
from solver_ppo.errors import UserError
from solver_ppo.evaluation import EvaluationConfig, Reference, score_answer
from solver_ppo.evaluation.summary import exposure


@pytest.fixture(scope="module")
def problems():
    return [item for item in generate(12, seed=3) if item.answer != "infeasible"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_error_kind_gets_its_verdict(kind, problems):
    config = EvaluationConfig()
    verdicts = []
    for item in problems:
        answer = flawed_answer(kind, item.reference_model, float(item.answer), random.Random(kind), item.family)
        if answer is None:
            continue
        result = score_answer(answer, Reference.from_answer(item.answer, item.reference_model), config)
        verdicts.append(exposure(result))
        if KINDS[kind] == "exception":
            assert result.error_line is not None, result.verdict
        if len(verdicts) == 2:
            break
    assert verdicts == [KINDS[kind]] * 2


def test_the_default_mix_is_orlms_and_a_mix_is_checked():
    assert sum(ORLM_MIX.values()) == pytest.approx(228)  # the wrong answers, split over their kinds
    assert sum(w for k, w in ORLM_MIX.items() if KINDS[k] == "silent") == pytest.approx(95)
    assert parse_mix("wrong_api=1, missing_bound=3") == {"wrong_api": 0.25, "missing_bound": 0.75}
    with pytest.raises(UserError, match="unknown teacher error kind 'typo'"):
        parse_mix("typo=1")
    with pytest.raises(UserError, match="no kind a positive weight"):
        parse_mix("wrong_api=0")


def test_revision_demonstrations_carry_the_feedback_score_gives_the_flawed_program(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["make-data", "--out", str(out), "--train", "10", "--heldout", "2", "--seed", "4", "--infeasible", "0",
                 "--answer-format", "pyscipopt", "--teacher-errors", "1",
                 "--teacher-error-mix", "misspelled_key=1,conflicting_row=1,missing_bound=1,miscopied_number=1",
                 "--revisions", "1"]) == 0
    assert "10 of 10 training demonstrations carry a teacher error" in capsys.readouterr().out
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"id": row["id"], "answer": row["revision"]["answer"]}) + "\n" for row in train))
    rows = tmp_path / "rows.jsonl"
    assert main(["score", "--data", str(out / "train.jsonl"), "--answers", str(answers), "--feedback", "--out", str(rows),
                 "--workers", "1"]) == 0
    scored = {row["id"]: row for row in map(json.loads, rows.read_text().splitlines())}
    assert all(scored[row["id"]]["feedback"] == row["revision"]["feedback"] for row in train)
    assert not any(row["matched"] for row in scored.values())  # every first answer is flawed
    assert {row["status"] for row in scored.values()} >= {"exception", "infeasible"}
    assert all(row["demonstration"] is None or row["demonstration"].startswith("```python") for row in train)
