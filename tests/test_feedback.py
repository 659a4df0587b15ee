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

from solver_ppo.cli import main
from solver_ppo.evaluation import EvaluationConfig, EvaluatorPool, Reference, feedback_message, score_answer
from solver_ppo.evaluation.feedback import NO_SUBSET

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


def test_a_model_with_two_infeasible_subsets_gets_the_same_one_every_time():
    """assembly + demand and labor + demand each conflict; between the subset searches the thread's
    SCIP instance solves other models (as a pool worker's does): the same subset every time, so
    make-data --revisions writes the same feedback on every rebuild."""
    two = lp("Maximize\n obj: 3 s + 8 b\nSubject To\n assembly: 3 s + 3 b <= 15\n labor: 7 s + 4 b <= 20\n"
             " demand: b >= 12\nGeneral\n s b\nEnd")
    subsets = set()
    for _ in range(10):
        score_answer(OPTIMAL, Reference(None, True), FEEDBACK)
        subsets.add(tuple(score_answer(two, Reference(None, True), FEEDBACK).infeasible_subset))
    assert len(subsets) == 1 and next(iter(subsets))[-1] == "s >= 0", subsets


def tour(n: int) -> str:
    """Every one of n cities is left once, and order rows u_i - u_j + n x_ij <= n - 1 stand on every
    pair, the start included: no tour can close, so the model is infeasible, and proving it for a
    subset takes SCIP some hundreds of branch-and-bound nodes."""
    cities = range(1, n + 1)
    arcs = [(i, j) for i in cities for j in cities if i != j]
    rows = [f" leave_{i}: " + " + ".join(f"x_{i}_{j}" for j in cities if j != i) + " = 1" for i in cities]
    rows += [f" order_{i}_{j}: u_{i} - u_{j} + {n} x_{i}_{j} <= {n - 1}" for i, j in arcs]
    return lp("Minimize\n obj: " + " + ".join(f"x_{i}_{j}" for i, j in arcs) + "\nSubject To\n" + "\n".join(rows)
              + "\nBounds\n" + "\n".join(f" 0 <= u_{i} <= {n - 1}" for i in cities)
              + "\nGeneral\n " + " ".join(f"u_{i}" for i in cities)
              + "\nBinary\n " + " ".join(f"x_{i}_{j}" for i, j in arcs) + "\nEnd")


def test_no_subset_within_the_work_limit_is_said():
    result = score_answer(tour(4), Reference(None, True), EvaluationConfig(feedback=True, feedback_nodes=10))
    assert (result.status, result.infeasible_subset, result.feedback_time_limit) == ("infeasible", [], None)
    assert feedback_message(result).endswith("\n" + NO_SUBSET)


def test_the_wall_clock_safety_is_said_as_such():
    # 400 rows x_i - x_{i+1} >= 1 around a cycle: infeasible, and a minimal subset holds all of them
    n = 400
    rows = "\n".join(f" r{i}: x{i} - x{(i + 1) % n} >= 1" for i in range(n))
    bounds = "\n".join(f" x{i} free" for i in range(n))
    answer = lp(f"Minimize\n obj: x0\nSubject To\n{rows}\nBounds\n{bounds}\nEnd")
    result = score_answer(answer, Reference(None, True), EvaluationConfig(feedback=True, feedback_seconds=0.001))
    assert (result.status, result.infeasible_subset, result.feedback_time_limit) == ("infeasible", [], 0.001)
    assert feedback_message(result).endswith(
        "\nThe search for an irreducible infeasible subset stopped at its time limit of 0.001 s.")


def test_the_same_feedback_on_a_repeat_and_beside_two_busy_processes():
    """The subset search is bounded by SCIP nodes, not the clock: on the tour model it needs
    hundreds of nodes (seconds on a loaded machine), and the message is the same when run again
    while two processes keep both cores busy."""
    config = EvaluationConfig(feedback=True, feedback_nodes=1000, feedback_seconds=120.0)
    answer = tour(4)

    def message() -> str:
        result = score_answer(answer, Reference(None, True), config)
        assert result.feedback_time_limit is None and result.infeasible_subset
        return feedback_message(result)

    first = message()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        loaded = message()
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert loaded == first
    assert "leave_1, leave_2, leave_3, leave_4, order_1_2" in first


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


def test_a_code_answer_gets_the_subset_of_the_model_it_built():
    code = ("```python\nimport pyscipopt\nm = pyscipopt.Model()\nx = {i: m.addVar(f'x[{i}]') for i in range(2)}\n"
            "m.addCons(x[0] + x[1] >= 10, name='need[0]')\nm.addCons(x[0] + 2 * x[1] <= 5, name='cap')\n"
            "m.addCons(x[0] <= 50, name='roomy')\nm.setObjective(x[0] + x[1])\nm.optimize()\n```")
    result = score_answer(code, Reference(1.0), FEEDBACK)
    assert (result.status, result.infeasible_subset) == ("infeasible", ["need[0]", "cap", "x[1] >= 0"])


def test_without_feedback_nothing_extra_is_gathered():
    config = EvaluationConfig()
    assert score_answer(INFEASIBLE, Reference(None, True), config).infeasible_subset is None
    assert score_answer(UNBOUNDED, Reference(5.0), config).unbounded_variable is None
    plain = score_answer(OPTIMAL, Reference(10.0), config)
    assert (plain.nonzero_values, plain.n_nonzero) == ([], 4)  # counted on every answer (revision headroom reads it)
    assert feedback_message(plain).splitlines()[-1] == "Objective value: 10."  # no values listed


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


def test_row_names_follow_the_text():
    from solver_ppo.evaluation import read_model
    from solver_ppo.evaluation.model import row_names

    text = "Minimize\n obj: x\nSubject To\n a: x >= 1\n a: y >= 1\n x + y <= 9\n r[2]: 1 <= x - y <= 4\n b: x <= 3\nEnd"
    assert row_names(read_model(text)) == ["row 1", "row 2", "row 3", "r[2] (lower side)", "r[2] (upper side)", "b"]
    mps = ("NAME t\nROWS\n N obj\n L cap\n G need\nCOLUMNS\n x obj 1 cap 1\n x need 1\nRHS\n rhs cap 4 need 1\n"
           "RANGES\n rng cap 2\nENDATA\n")
    assert row_names(read_model(mps)) == ["cap (lower side)", "need", "cap (upper side)"]


def test_the_pool_carries_the_verdict_and_the_expected_answer():
    items = [(INFEASIBLE, Reference(None, True)), (UNBOUNDED, Reference(3.0)), (OPTIMAL, REFERENCES[2]), (RAISES, Reference(2.5))]
    with EvaluatorPool(EvaluationConfig(workers=1, feedback=True, feedback_values=3)) as pool:
        done = []
        results = pool.score_many(items, done.append)
    assert sum(done) == len(items)  # the progress callback heard of every answer
    assert [r.expected for r in results] == ["infeasible", 3.0, 10.0, 2.5]  # the reference model solved: 5 p + q, p + q <= 2
    here = [score_answer(answer, ref, EvaluationConfig(feedback=True, feedback_values=3)) for answer, ref in items]
    for pooled, local in zip(results, here):
        assert feedback_message(pooled) == feedback_message(local)
        assert (pooled.infeasible_subset, pooled.unbounded_variable, pooled.nonzero_values, pooled.error_line) == (
            local.infeasible_subset, local.unbounded_variable, local.nonzero_values, local.error_line)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture()
def score_files(tmp_path):
    problems = write_jsonl(tmp_path / "problems.jsonl", [
        {"id": "conflict", "question": "q", "answer": "infeasible"},
        {"id": "solved", "question": "q", "answer": 12},
        {"id": "by-model", "question": "q", "reference_model": REFERENCES[2].model_text},
    ])
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"id": "conflict", "answer": INFEASIBLE}, {"id": "solved", "answer": OPTIMAL}, {"id": "by-model", "answer": "none"},
    ])
    return problems, answers


def test_score_feedback_rows(score_files, tmp_path, capsys):
    problems, answers = score_files
    out = tmp_path / "rows.jsonl"
    assert main(["score", "--data", str(problems), "--answers", str(answers), "--out", str(out), "--workers", "1", "--feedback"]) == 0
    rows = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert rows["conflict"]["infeasible_subset"] == ["c[1]", "cap", "y >= 0"]
    assert rows["conflict"]["feedback"] == feedback_message(score_answer(INFEASIBLE, Reference(None, True), FEEDBACK))
    assert "infeasible_subset" not in rows["solved"]  # only infeasible models have one
    assert rows["solved"]["feedback"].endswith("Nonzero variables: a = 1, b = 2, c = 3, d = 4.")
    assert [rows[i]["expected"] for i in ("conflict", "solved", "by-model")] == ["infeasible", 12.0, 10.0]
    assert main(["score", "--data", str(problems), "--answers", str(answers), "--out", str(out), "--workers", "1"]) == 0
    assert not [row for row in map(json.loads, out.read_text().splitlines()) if "feedback" in row or "infeasible_subset" in row]


def score_command(problems: Path, answers: Path) -> list[str]:
    return [sys.executable, "-m", "app", "score", "--data", str(problems), "--answers", str(answers), "--workers", "1"]


def test_score_draws_no_progress_bar_when_stderr_is_not_a_terminal(score_files):
    done = subprocess.run(score_command(*score_files), capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "answer/s" not in done.stderr and "3/3" not in done.stderr
    assert done.stderr.startswith("id ")  # the summary table is all stderr holds


def test_score_draws_a_progress_bar_on_a_terminal(score_files):
    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 columns wide
    proc = subprocess.Popen(score_command(*score_files), stdout=subprocess.DEVNULL, stderr=child, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(child)
    seen = b""
    while True:
        try:
            chunk = os.read(parent, 4096)
        except OSError:  # the child side closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(parent)
    assert proc.wait(timeout=120) == 0
    assert b"score: 100%" in seen and b"3/3" in seen and b"answer/s" in seen
