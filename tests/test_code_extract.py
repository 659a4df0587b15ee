"""Which part of an answer is its code, and code answers scored like LP answers (real sandbox)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from solver_ppo.evaluation import EvaluationConfig, Reference, extract_model, score_answer
from solver_ppo.evaluation.config import CodeLimits

LP = "Maximize\n obj: 3 x + 2 y\nSubject To\n c1: x + 2 y <= 7\nBounds\n 0 <= x <= 10\n 0 <= y <= 4\nGeneral\n x\nEnd\n"
PULP = """import pulp
prob = pulp.LpProblem("m", pulp.LpMaximize)
x = pulp.LpVariable("x", 0, 10, cat="Integer")
y = pulp.LpVariable("y", 0, 4)
prob += 3 * x + 2 * y
prob += x + 2 * y <= 7, "c1"
prob.solve()
"""
GUROBI = """import gurobipy as gp
from gurobipy import GRB
m = gp.Model("m")
x = m.addVar(ub=10, vtype=GRB.INTEGER, name="x")
y = m.addVar(ub=4, name="y")
m.setObjective(3 * x + 2 * y, GRB.MAXIMIZE)
m.addConstr(x + 2 * y <= 7, name="c1")
m.optimize()
print("Optimal value:", m.ObjVal)
"""
SCIPY = """from scipy.optimize import linprog
res = linprog([-3, -2], A_ub=[[1, 2]], b_ub=[7], bounds=[(0, 10), (0, 4)], integrality=[1, 0])
print(-res.fun)
"""


@pytest.mark.parametrize("wrap", [
    lambda c: f"```python\n{c}```",
    lambda c: f"```py\n{c}```",
    lambda c: f"```\n{c}```",
    lambda c: f"<python>\n{c}</python>",
    lambda c: f"Solution:\n```Python\n{c}```\nThe optimal value is 21.",
])
def test_code_blocks_in_every_wrapping_are_code_answers(wrap):
    ext = extract_model(wrap(PULP))
    assert (ext.status, ext.fmt, ext.library) == ("found", "python", "pulp")
    assert ext.text.strip() == PULP.strip()


def test_the_last_block_importing_a_solver_library_wins_with_its_python_continuations():
    draft = PULP.replace("<= 7", "<= 70")
    answer = (f"First try:\n```python\n{draft}```\nCorrected:\n```python\n{PULP}```\n"
              "Then:\n```python\nprint(pulp.value(prob.objective))\n```\nOutput:\n```\n21.0\n```")
    ext = extract_model(answer)
    assert ext.text == PULP + "print(pulp.value(prob.objective))\n"  # the untagged output block is not code
    assert "<= 70" not in ext.text


def test_code_wins_over_an_lp_block_and_a_block_without_a_solver_import_is_not_code():
    mixed = extract_model(f"The model:\n```lp\n{LP}```\nIn code:\n```python\n{GUROBI}```")
    assert (mixed.fmt, mixed.library) == ("python", "gurobipy")
    plain = extract_model(f"```python\nimport math\nprint(math.pi)\n```\n```lp\n{LP}```")
    assert (plain.status, plain.fmt) == ("found", "lp")
    assert extract_model("```python\nprint('max x')\n```").status == "none"


def test_another_solver_library_is_a_code_answer_scored_as_unsupported():
    ext = extract_model("```python\nfrom ortools.linear_solver import pywraplp\n```")
    assert (ext.fmt, ext.library) == ("python", "ortools")
    r = score_answer("```python\nfrom ortools.linear_solver import pywraplp\n```", Reference(21.0), EvaluationConfig())
    assert r.status == "unsupported" and "ortools" in r.reason and r.reward == 0.0


@pytest.mark.parametrize("code", [PULP, GUROBI, SCIPY], ids=["pulp", "gurobipy", "scipy"])
def test_a_code_answer_scores_like_the_same_model_written_in_lp(code):
    config = EvaluationConfig(code=CodeLimits(wall_s=10.0))
    reference = Reference(None, False, LP)  # optimum and graph from the reference model
    as_lp = score_answer(f"```lp\n{LP}```", reference, config)
    as_code = score_answer(f"```python\n{code}```", reference, config)
    assert as_code.status == as_lp.status == "optimal"
    assert as_code.objective == pytest.approx(as_lp.objective) == pytest.approx(21.0)
    assert as_code.graph_distance == pytest.approx(0.0, abs=1e-9)
    assert as_code.reward == as_lp.reward == 1.0


def test_printed_numbers_never_count():
    lying = "```python\nimport pulp\nprint('Optimal value: 21')\n```\nThe optimal value is 21."
    r = score_answer(lying, Reference(21.0), EvaluationConfig())
    assert (r.status, r.reward, r.final_answer) == ("no_solve", 0.0, 21.0)


def test_evaluate_model_runs_python_files_next_to_lp_files(tmp_path):
    """`python -m app evaluate-model` as a user runs it: a .py program's captured model is solved."""
    (tmp_path / "model.py").write_text(GUROBI)
    (tmp_path / "model.lp").write_text(LP)
    (tmp_path / "broken.py").write_text("import pulp\nx = 1 / 0\n")
    files = [str(tmp_path / name) for name in ("model.py", "model.lp", "broken.py")]
    done = subprocess.run([sys.executable, "-m", "app", "evaluate-model", *files, "--workers", "1"], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1], timeout=180)
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["status"], r["objective"]) for r in rows] == [("optimal", 21.0), ("optimal", 21.0), ("exception", None)]
    assert rows[2]["reason"] == "pulp: ZeroDivisionError: division by zero (answer line 2)"


def test_the_ppo_reward_scores_code_answers_through_its_pool():
    """solver_ppo.callbacks.solver_reward with no new setting: code rollouts get the sandbox's scores."""
    from types import SimpleNamespace

    import torch

    from solver_ppo.callbacks.solver_reward import SolverReward

    module = SimpleNamespace(device=torch.device("cpu"), log_dict=lambda *a, **k: None, print=lambda *a: None,
                             cfg=SimpleNamespace(rollout=SimpleNamespace(turns=1)))
    reward = SolverReward(EvaluationConfig(workers=1))
    reward.setup(None, module, "fit")
    try:
        problems = [SimpleNamespace(answer="21", reference_model=LP)] * 3
        reward.begin([f"```python\n{PULP}```", f"```python\n{SCIPY}```", "```python\nimport pulp\nprint(21)\n```"], problems)
        scores = reward.finish(module)
        settled = reward.settle(module, scores.verdicts(), 1, problems)  # logs the solver metrics, once per rollout
    finally:
        reward.teardown(None, module, "fit")
    assert scores.scores == [1.0, 1.0, 0.0] and [v.score for v in settled] == scores.scores
    assert [b["status"] for b in scores.breakdowns] == ["optimal", "optimal", "no_solve"]
    assert module.last_solver_metrics["accuracy"] == pytest.approx(2 / 3)
