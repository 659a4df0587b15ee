"""Feedback: the message a policy reads about its answer, from the answer's own evaluation only.

Hand-built answers whose verdict is known (real SCIP, a real sandbox for code answers, the real
pool), the same message whatever the reference, `score --feedback` rows, the expected answer in
rows, and the progress bar of `score` (silent when stderr is not a terminal, drawn on a pty).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from dataclasses import asdict
from pathlib import Path

import pytest

from app.cli import main
from app.evaluation import EvaluationConfig, EvaluatorPool, Reference, feedback_message, score_answer

ROOT = Path(__file__).resolve().parents[1]
FEEDBACK = EvaluationConfig(feedback=True)


def lp(text: str) -> str:
    return f"```lp\n{text}\n```"


# c[1] and cap conflict (x + y >= 10 but x + 2 y <= 5 with y >= 0); `other` appears twice and one row is unnamed
INFEASIBLE = lp("Minimize\n obj: x + y\nSubject To\n c[1]: x + y >= 10\n cap: x + 2 y <= 5\n other: x - y <= 3\n"
                " other: x + y <= 100\n x - y >= -50\nBounds\n x <= 8\nEnd")
# a repeated name and a missing one inside the conflict: `row N` (N = the row's number as written)
INFEASIBLE_UNNAMED = lp("Minimize\n obj: x\nSubject To\n dup: x + y >= 10\n dup: x <= 20\n x + 2 y <= 5\nEnd")
UNBOUNDED = lp("Maximize\n obj: x + 2 y\nSubject To\n c: y - x >= 1\n d: x <= 7\nEnd")  # x stops at 7, y does not
OPTIMAL = lp("Maximize\n obj: a + b + c + d + e\nSubject To\n cap[1]: a + b + c + d + e <= 10\n"
             " one: a = 1\n two: b = 2\n three: c = 3\n four: d = 4\nEnd")
RAISES = "```python\nimport pyscipopt\nm = pyscipopt.Model()\nx = m.addVar('x')\nrate = 1 / 0\nm.optimize()\n```"
SYNTAX = "```python\nimport pyscipopt\nm = pyscipopt.Model()\nx = m.addVar('x'\nm.optimize()\n```"
# scipy only minimizes: against a maximizing reference model the evaluator flips it (-3x - 2y -> 3x + 2y)
SCIPY = ("```python\nfrom scipy.optimize import linprog\n"
         "res = linprog(c=[-3, -2], A_ub=[[1, 1], [1, 3]], b_ub=[4, 6], bounds=[(0, 3), (0, None)])\n```")


def test_infeasible_names_the_two_conflicting_rows_as_written():
    result = score_answer(INFEASIBLE, Reference(None, True), FEEDBACK)
    assert result.status == "infeasible"
    assert result.infeasible_subset == ["c[1]", "cap", "y >= 0"]  # x <= 8 and the other rows are not needed
    assert feedback_message(result) == (
        "Solver status: infeasible (SCIP proved the model infeasible).\n"
        "The model has 2 variables and 5 constraints.\n"
        "These constraints and bounds cannot all hold (an irreducible infeasible subset): c[1], cap, y >= 0.")


def test_a_repeated_or_missing_name_is_the_rows_number():
    result = score_answer(INFEASIBLE_UNNAMED, Reference(None, True), FEEDBACK)
    assert result.infeasible_subset == ["row 1", "row 3", "y >= 0"]


def test_no_subset_within_the_budget_is_said():
    # 400 rows x_i - x_{i+1} >= 1 around a cycle: infeasible, and a minimal subset holds all of them
    n = 400
    rows = "\n".join(f" r{i}: x{i} - x{(i + 1) % n} >= 1" for i in range(n))
    bounds = "\n".join(f" x{i} free" for i in range(n))
    answer = lp(f"Minimize\n obj: x0\nSubject To\n{rows}\nBounds\n{bounds}\nEnd")
    result = score_answer(answer, Reference(None, True), EvaluationConfig(feedback=True, feedback_seconds=0.001))
    assert (result.status, result.infeasible_subset) == ("infeasible", [])
    assert feedback_message(result).endswith("An irreducible infeasible subset: no subset found within the budget.")


def test_unbounded_names_a_variable_that_grows():
    result = score_answer(UNBOUNDED, Reference(5.0), FEEDBACK)
    assert result.status == "unbounded"
    assert (result.unbounded_variable, result.unbounded_direction) == ("y", 1)
    assert feedback_message(result).splitlines()[-1] == "y can grow without bound while the objective improves."


def test_optimal_lists_the_nonzero_values_then_how_many_more():
    result = score_answer(OPTIMAL, Reference(10.0), EvaluationConfig(feedback=True, feedback_values=3))
    assert (result.status, result.model_objective, result.n_nonzero) == ("optimal", 10.0, 4)  # e = 0
    assert result.nonzero_values == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    assert feedback_message(result) == (
        "Solver status: optimal.\n"
        "The model has 5 variables and 5 constraints.\n"
        "Objective value: 10.\n"
        "Nonzero variables: a = 1, b = 2, c = 3, …and 1 more.")


def test_every_variable_zero_is_said():
    result = score_answer(lp("Minimize\n obj: x + y\nSubject To\n c: x + y <= 12\nEnd"), Reference(0.0), FEEDBACK)
    assert feedback_message(result).splitlines()[-2:] == ["Objective value: 0.", "Every variable is 0 in this solution."]


def test_code_answers_name_the_line_of_their_error():
    raised = score_answer(RAISES, Reference(1.0), FEEDBACK)
    assert (raised.status, raised.error_line) == ("exception", 4)
    assert feedback_message(raised) == "Solver status: exception (pyscipopt: ZeroDivisionError: division by zero (answer line 4))."
    broken = score_answer(SYNTAX, Reference(1.0), FEEDBACK)
    assert (broken.status, broken.error_line) == ("syntax_error", 3)  # the line of the unclosed parenthesis
    assert feedback_message(broken).startswith("Solver status: syntax_error (pyscipopt: SyntaxError: ")


def test_without_feedback_nothing_extra_is_gathered():
    config = EvaluationConfig()
    assert score_answer(INFEASIBLE, Reference(None, True), config).infeasible_subset is None
    assert score_answer(UNBOUNDED, Reference(5.0), config).unbounded_variable is None
    plain = score_answer(OPTIMAL, Reference(10.0), config)
    assert (plain.nonzero_values, plain.n_nonzero) == ([], None)
    assert feedback_message(plain).splitlines()[-1] == "Objective value: 10."  # no claim about the variables


REFERENCES = [  # a number, an infeasible reference, and a maximizing reference model with another optimum
    Reference(7.0),
    Reference(None, True),
    Reference(model_text="Maximize\n obj: 5 p + q\nSubject To\n c: p + q <= 2\nEnd"),
]


@pytest.mark.parametrize("answer", [INFEASIBLE, UNBOUNDED, OPTIMAL, RAISES, SCIPY, "no model"],
                         ids=["infeasible", "unbounded", "optimal", "raises", "scipy", "no-model"])
def test_the_message_is_the_same_whatever_the_reference(answer):
    results = [score_answer(answer, ref, FEEDBACK) for ref in REFERENCES]
    messages = {feedback_message(r) for r in results}
    assert len(messages) == 1, messages
    message = messages.pop().lower()
    assert not [word for word in ("match", "reference", "correct", "wrong", "reward") if word in message]


def test_scipy_objective_is_stated_in_the_sense_the_answer_wrote():
    flipped = score_answer(SCIPY, REFERENCES[2], FEEDBACK)  # oriented as 'max 3x + 2y' to compare with the reference
    assert (flipped.objective, flipped.model_objective) == (pytest.approx(11.0), pytest.approx(-11.0))
    assert "Objective value: -11." in feedback_message(flipped)
