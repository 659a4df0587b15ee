"""Labels from votes (app/evaluation/votes.py) on hand-built groups of real, solved answers, and
`score --labels votes` on a file of answers."""

import json
import re

import pytest

from solver_ppo.cli import main
from solver_ppo.evaluation import EvaluationConfig, Reference, score_answer
from solver_ppo.evaluation.config import VoteRule
from solver_ppo.evaluation.votes import label_groups, reward_against, vote

BASE = "Maximize\n obj: 3 x + 2 y\nSubject To\n c1: x + y <= 4\n c2: x + 3 y <= 6\nBounds\n x <= 3\nEnd"  # optimum 11


def lp(text: str) -> str:
    return f"The model:\n```lp\n{text}\n```"


ELEVEN = lp(BASE)
ELEVEN_RENAMED = lp(re.sub(r"\bx\b", "a", re.sub(r"\by\b", "b", BASE)))  # the same optimum written otherwise
# the same region, whose vertices are (0, 0), (3, 0), (3, 1), (0, 2), with other objectives:
TEN = lp(BASE.replace("3 x + 2 y", "2 x + 4 y"))
NINE = lp(BASE.replace("3 x + 2 y", "2 x + 3 y"))
FOUR = lp(BASE.replace("3 x + 2 y", "x + y"))
INFEASIBLE = lp("Minimize\n obj: x\nSubject To\n c1: x >= 5\n c2: x <= 3\nEnd")
ALL_ZERO = lp("Minimize\n obj: x + y\nSubject To\n c1: x + y >= 0\nEnd")  # optimal at x = y = 0
RESTATED = lp("Maximize\n obj: 11\nSubject To\n c1: x <= 1\nEnd")
NO_MODEL = "The answer is 11."

W = EvaluationConfig().weights
VERDICT_ONLY = (W.format + W.solved) / (W.format + W.solved + W.answer)


def scored(*answers: str):
    """The answers scored as votes mode scores them: with no reference."""
    return [score_answer(a, Reference(), EvaluationConfig()) for a in answers]


def test_plurality_is_the_label_and_rewards_equal_scoring_against_it():
    answers = [ELEVEN, ELEVEN_RENAMED, TEN, NO_MODEL]
    config = EvaluationConfig()
    rescored, votes = label_groups(scored(*answers), ["p"] * 4, config)
    group = votes["p"]
    assert (group.label.value, group.votes, group.plurality, group.why) == (pytest.approx(11.0), 3, 2, "")
    assert [r.reward for r in rescored] == pytest.approx([1.0, 1.0, VERDICT_ONLY, 0.0])
    assert [r.matched for r in rescored] == [True, True, False, False]
    # exactly the reward of scoring each answer against the label as a reference answer
    for answer, r in zip(answers, rescored):
        direct = score_answer(answer, Reference(11.0), config)
        assert (r.reward, r.breakdown, r.matched) == (pytest.approx(direct.reward), direct.breakdown, direct.matched)
    assert "does not match the label 11" in rescored[2].reason


def test_tie_too_few_and_too_small_a_share_make_no_label():
    rule, match = VoteRule(share=0.5, min_votes=2), EvaluationConfig().match
    tie = vote(scored(ELEVEN, ELEVEN, TEN, TEN), rule, match)
    assert tie.label is None and tie.why == "no label: a tie, 2 votes each for 11 and 10"
    one = vote(scored(ELEVEN, NO_MODEL, NO_MODEL), rule, match)
    assert (one.label, one.votes) == (None, 1) and "fewer than evaluation.votes.min_votes=2" in one.why
    spread = scored(ELEVEN, ELEVEN, TEN, NINE, FOUR)  # 2 of 5 accepted votes
    thin = vote(spread, rule, match)
    assert (thin.label, thin.plurality, thin.votes) == (None, 2, 5) and "2 of 5 accepted votes, under evaluation.votes.share=0.5" in thin.why
    assert vote(spread, VoteRule(share=0.4, min_votes=2), match).label.value == pytest.approx(11.0)
    # without a label every answer keeps its verdict terms only
    rescored, _ = label_groups(scored(ELEVEN, ELEVEN, TEN, TEN), [0] * 4, EvaluationConfig())
    assert [r.reward for r in rescored] == pytest.approx([VERDICT_ONLY] * 4)
    assert all(r.reason.startswith("no label: a tie") and r.expected is None for r in rescored)


def test_infeasible_votes_and_can_win():
    config = EvaluationConfig()
    rescored, votes = label_groups(scored(INFEASIBLE, INFEASIBLE, ELEVEN), ["q"] * 3, config)
    assert votes["q"].label.infeasible and votes["q"].plurality == 2
    assert [r.reward for r in rescored] == pytest.approx([1.0, 1.0, VERDICT_ONLY])
    assert [r.expected for r in rescored] == ["infeasible"] * 3
    assert rescored[2].reason == "the label is infeasible but the model is optimal"


def test_all_zero_and_restated_models_do_not_vote():
    rule, match = VoteRule(), EvaluationConfig().match
    zeros = vote(scored(ALL_ZERO, ALL_ZERO, ALL_ZERO), rule, match)
    assert (zeros.label, zeros.votes) == (None, 0) and "none of the 3 answers' models was accepted" in zeros.why
    restated = vote(scored(RESTATED, RESTATED, RESTATED), rule, match)
    assert (restated.label, restated.votes) == (None, 0)
    # they do not outvote two accepted answers, and a restated 11 earns no answer credit against the label 11
    rescored, votes = label_groups(scored(ALL_ZERO, ALL_ZERO, RESTATED, ELEVEN, ELEVEN), [1] * 5, EvaluationConfig())
    assert votes[1].label.value == pytest.approx(11.0) and votes[1].votes == 2
    assert [r.matched for r in rescored] == [False, False, False, True, True]


def test_groups_vote_apart():
    rescored, votes = label_groups(scored(ELEVEN, TEN, ELEVEN, TEN), ["a", "b", "a", "b"], EvaluationConfig())
    assert (votes["a"].label.value, votes["b"].label.value) == (pytest.approx(11.0), pytest.approx(10.0))
    assert [r.reward for r in rescored] == pytest.approx([1.0] * 4)


def test_reward_against_the_truth_watches_without_solving_again():
    [r] = scored(TEN)
    assert reward_against(r, Reference(10.0), EvaluationConfig()).matched
    assert not reward_against(r, Reference(None, True), EvaluationConfig()).matched


def test_score_labels_votes_writes_each_rows_label_and_the_label_accuracy(tmp_path, capsys):
    problems = tmp_path / "problems.jsonl"
    problems.write_text("\n".join(json.dumps(p) for p in [
        {"id": "p1", "question": "Q1", "answer": 11},  # votes 11: right
        {"id": "p2", "question": "Q2", "answer": 9},  # votes 10: wrong
        {"id": "p3", "question": "Q3"},  # no answer: labelled, not checked
        {"id": "p4", "question": "Q4", "answer": 11},  # a tie: no label
    ]) + "\n")
    rows = [("p1", ELEVEN), ("p1", ELEVEN_RENAMED), ("p1", TEN), ("p2", TEN), ("p2", TEN), ("p3", INFEASIBLE),
            ("p3", INFEASIBLE), ("p4", ELEVEN), ("p4", NINE)]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(json.dumps({"id": i, "answer": a}) for i, a in rows) + "\n")
    out = tmp_path / "scored.jsonl"
    assert main(["score", "--data", str(problems), "--answers", str(answers), "--out", str(out), "--labels", "votes",
                 "--workers", "1"]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(w["id"], w["label"], w["reward"]) for w in written] == [
        ("p1", 11.0, 1.0), ("p1", 11.0, 1.0), ("p1", 11.0, pytest.approx(VERDICT_ONLY, abs=1e-6)),
        ("p2", 10.0, 1.0), ("p2", 10.0, 1.0), ("p3", "infeasible", 1.0), ("p3", "infeasible", 1.0),
        ("p4", None, pytest.approx(VERDICT_ONLY, abs=1e-6)), ("p4", None, pytest.approx(VERDICT_ONLY, abs=1e-6))]
    summary = capsys.readouterr().out
    assert "groups              4" in summary
    assert "labelled groups     3  (0.750)" in summary
    assert "label accuracy      0.500  (1 of 2 labelled groups with an answer)" in summary
    # the problems' answers are never read for the reward: the same rows without them
    problems.write_text("\n".join(json.dumps({"id": f"p{k}", "question": "Q"}) for k in range(1, 5)) + "\n")
    bare = tmp_path / "bare.jsonl"
    assert main(["score", "--data", str(problems), "--answers", str(answers), "--out", str(bare), "--labels", "votes",
                 "--workers", "1"]) == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k != "solve_seconds"} for r in rows]  # noqa: E731
    assert strip(json.loads(line) for line in bare.read_text().splitlines()) == strip(written)
    assert "no labelled group's problem has an answer" in capsys.readouterr().out
    assert main(["score", "--data", str(problems), "--answers", str(answers), "--out", str(bare), "--labels", "votes",
                 "--workers", "1", "--vote-min", "3"]) == 0  # no group has 3 agreeing votes
    assert "labelled groups     0  (0.000)" in capsys.readouterr().out


def test_score_labels_votes_needs_ids_that_name_problems(tmp_path, capsys):
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"id": "p1", "question": "Q"}) + "\n")
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"answer": ELEVEN}) + "\n")
    assert main(["score", "--data", str(problems), "--answers", str(answers), "--labels", "votes"]) != 0
    assert "no 'id': with --labels votes each answer names its problem" in capsys.readouterr().err
    answers.write_text(json.dumps({"id": "p9", "answer": ELEVEN}) + "\n")
    assert main(["score", "--data", str(problems), "--answers", str(answers), "--labels", "votes"]) != 0
    assert "id 'p9' is not a problem of" in capsys.readouterr().err
    assert main(["score", "--data", str(problems), "--answers", str(answers), "--labels", "votes", "--vote-share", "0"]) != 0
    assert "--vote-share 0.0 must be in (0, 1]" in capsys.readouterr().err
