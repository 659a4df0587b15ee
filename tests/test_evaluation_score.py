"""score_answer, matching and references, and every kind of bad input (in-process)."""

import pickle
import re

import pytest

from builders import market_split
from solver_ppo.evaluation import (
    EvaluationConfig,
    MatchRule,
    Reference,
    SolveResult,
    SolverLimits,
    objective_matches,
    read_model,
    score_answer,
    solve_model,
)

LP = "Maximize\n obj: 3 x + 2 y\nSubject To\n c1: x + y <= 4\n c2: x + 3 y <= 6\nBounds\n x <= 3\nEnd"  # optimum 11
ANSWER = f"Let x, y be the amounts.\n```lp\n{LP}\n```\nThe optimal value is 11."




def cfg(**limits) -> EvaluationConfig:
    return EvaluationConfig(limits=SolverLimits(**limits))


def test_correct_answer_gets_full_reward():
    r = score_answer(ANSWER, Reference(11.0), cfg())
    assert (r.status, r.objective, r.matched, r.reward) == ("optimal", pytest.approx(11.0), True, 1.0)
    assert r.breakdown == {"format": 1.0, "solved": 1.0, "answer": 1.0}
    assert (r.final_answer, r.n_vars, r.n_cons, r.graph_distance) == (11.0, 2, 2, None)
    assert pickle.loads(pickle.dumps(r)) == r


def test_wrong_optimum_keeps_format_and_solved_terms():
    r = score_answer(ANSWER, Reference(12.0), cfg())
    w = EvaluationConfig().weights
    assert not r.matched and r.reward == pytest.approx((w.format + w.solved) / (w.format + w.solved + w.answer))
    assert "does not match the reference 12" in r.reason


def test_reference_model_adds_the_graph_term_and_its_optimum():
    renamed = re.sub(r"\bx\b", "u", re.sub(r"\by\b", "v", LP)).replace("c1", "k1")
    r = score_answer(ANSWER, Reference(model_text=renamed), cfg())
    assert (r.matched, r.graph_distance, r.reward, r.breakdown["graph"]) == (True, 0.0, 1.0, 1.0)
    other = LP.replace("x + 3 y <= 6", "x + 3 y <= 4.5")  # optimum 10, one rhs differs
    r = score_answer(ANSWER, Reference(model_text=other), cfg())
    assert not r.matched and 0.0 < r.graph_distance < 0.1
    w = EvaluationConfig().weights
    expect = (w.format + w.solved + w.graph * (1 - r.graph_distance)) / (w.format + w.solved + w.answer + w.graph)
    assert r.reward == pytest.approx(expect)


def test_infeasible_reference_matches_infeasible_model():
    lp = "min x\nst\n c1: x >= 5\n c2: x <= 3\nend"
    r = score_answer(f"```lp\n{lp}\n```", Reference.from_answer("No Best Solution"), cfg())
    assert (r.status, r.matched, r.reward) == ("infeasible", True, 1.0)
    r = score_answer(ANSWER, Reference.from_answer("infeasible"), cfg())
    assert not r.matched and "reference is infeasible" in r.reason


@pytest.mark.parametrize(
    "raw, value, infeasible",
    [("219816.0", 219816.0, False), (" $1,234.50 ", 1234.5, False), (-3, -3.0, False), ("1e3", 1000.0, False),
     ("No Best Solution", None, True), ("Infeasible", None, True), (None, None, False)],
)
def test_reference_from_answer(raw, value, infeasible):
    ref = Reference.from_answer(raw)
    assert (ref.value, ref.infeasible) == (value, infeasible)


def test_reference_from_bad_answer_says_why():
    with pytest.raises(ValueError, match="'twelve' is not a number"):
        Reference.from_answer("twelve")


def test_match_rules():
    pred = SolveResult("optimal", objective=100.0)
    assert objective_matches(pred, 100.00005, False, MatchRule("abs_rel", 1e-6))
    assert not objective_matches(pred, 100.001, False, MatchRule("abs_rel", 1e-6))
    assert objective_matches(pred, 104.0, False, MatchRule("relative", 0.05))
    assert not objective_matches(pred, 106.0, False, MatchRule("relative", 0.05))
    assert not objective_matches(SolveResult("timelimit", objective=100.0), 100.0, False, MatchRule())
    assert objective_matches(SolveResult("infeasible"), None, True, MatchRule())
    with pytest.raises(ValueError, match="unknown match rule 'close'"):
        objective_matches(pred, 100.0, False, MatchRule("close"))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("answer", ["", "   \n", "asdf 12 ;; <<>> ``` ``` \x00\x01", "Maximize profit subject to the budget."])
def test_empty_and_garbage_answers(answer):
    r = score_answer(answer, Reference(1.0), cfg())
    assert r.reward == 0.0 and r.status in ("no_model", "parse_error")
    assert r.reason


def test_ten_megabyte_answer_is_rejected_without_parsing():
    r = score_answer("x" * 10_000_000, Reference(1.0), cfg())
    assert (r.status, r.reward) == ("rejected", 0.0)
    assert "10000000 characters, over the limit of 200000" in r.reason


def test_non_utf8_bytes():
    raw = b"```lp\nmax x\nst\n c: x <= 2\nend\n```\n\xff\xfe\x80 final answer: 2"
    r = score_answer(raw, Reference(2.0), cfg())
    assert (r.status, r.matched) == ("optimal", True)
    r = score_answer(b"\xff\xfe\x80\x81" * 100, Reference(2.0), cfg())
    assert r.status == "no_model" and r.reward == 0.0


def test_syntax_error_reason_names_the_line():
    r = score_answer("```lp\nmax x\nst\n c1: x <= 2\n c2: x >= >= 1\nend\n```", Reference(2.0), cfg())
    assert (r.status, r.reward, r.breakdown["format"]) == ("parse_error", 0.0, 0.0)
    assert "line 4: unexpected '>=' after '>='" in r.reason  # lines count within the model text


def test_model_over_the_size_limits():
    r = score_answer(ANSWER, Reference(11.0), cfg(max_vars=1))
    assert (r.status, r.reward) == ("rejected", pytest.approx(0.1 / 0.8))  # format only
    assert "2 variables, over the limit of 1" in r.reason
    r = score_answer(ANSWER, Reference(11.0), cfg(max_nonzeros=3))
    assert "4 nonzeros, over the limit of 3" in r.reason


def test_unbounded_and_infeasible_models():
    r = score_answer("```lp\nmax x + y\nst\n c: x - y <= 1\nend\n```", Reference(5.0), cfg())
    assert (r.status, r.matched) == ("unbounded", False) and "unbounded" in r.reason
    r = score_answer("```lp\nmax x\nst\n c: x + y <= -1\nend\n```", Reference(5.0), cfg())
    assert (r.status, r.breakdown["solved"]) == ("infeasible", 0.0)


def test_milp_beyond_the_time_limit():
    r = score_answer(f"```lp\n{market_split()}\n```", Reference(20.0), cfg(time_limit_s=1.0))
    assert r.status == "timelimit" and not r.matched
    assert r.breakdown == {"format": 1.0, "solved": 0.0, "answer": 0.0}
    assert "time limit of 1 s" in r.reason and 0.9 <= r.solve_seconds < 5.0


def test_two_models_in_one_answer_are_rejected():
    two = f"```lp\n{LP}\n```\nOr maybe:\n```lp\n{LP.replace('<= 4', '<= 5')}\n```"
    r = score_answer(two, Reference(11.0), cfg())
    assert (r.status, r.reward) == ("several", 0.0)
    assert "2 different models" in r.reason


def test_solve_reports_values_and_objective_constant():
    m = read_model("min 2 x + 3 y + 10\nst\n c: x + y >= 4\nbounds\n x <= 1\ngeneral\n y\nend")
    r = solve_model(m, SolverLimits())
    assert (r.status, r.objective) == ("optimal", pytest.approx(2 * 1 + 3 * 3 + 10))
    assert r.values == {"x": pytest.approx(1.0), "y": pytest.approx(3.0)}


# ----------------------------------------------------------------------------- restated numbers


@pytest.mark.parametrize(
    "lp",
    [
        "max 11\nst\n c1: x + y <= 4\nend",  # variables, but none in the objective
        "Maximize\n obj: 0 x + 11\nSubject To\n c: x <= 1\nEnd",  # a zero coefficient is no term
        "Minimize\n obj: 11\nEnd",  # no variables at all
    ],
)
def test_a_model_that_only_restates_the_optimum_gets_no_answer_credit(lp):
    r = score_answer(f"```lp\n{lp}\n```", Reference(11.0), cfg())
    assert (r.status, r.objective, r.matched) == ("optimal", pytest.approx(11.0), False)
    assert r.breakdown == {"format": 1.0, "solved": 1.0, "answer": 0.0}
    assert "only restates a number" in r.reason


def test_restated_number_with_a_reference_model():
    constant = "Minimize\n obj: 11\nSubject To\n c: x <= 1\nEnd"
    r = score_answer(f"```lp\n{constant}\n```", Reference(model_text=LP), cfg())  # the reference has variable terms
    assert not r.matched and "only restates a number" in r.reason
    r = score_answer(f"```lp\n{constant}\n```", Reference(model_text="Minimize\n obj: 11\nSubject To\n c: y <= 3\nEnd"), cfg())
    assert r.matched and r.breakdown["answer"] == 1.0  # the reference is such a model itself: nothing to derive
    r = score_answer(f"```lp\n{constant}\n```", Reference.from_answer("infeasible"), cfg())
    assert not r.matched


def test_a_constant_term_beside_variable_terms_is_fine():
    r = score_answer("```lp\nmax x + 10\nst\n c: x <= 1\nend\n```", Reference(11.0), cfg())
    assert r.matched and r.reward == 1.0
    quadratic_only = score_answer("```lp\nmax [ 2 x * y ] / 2\nst\n c: x + y <= 4\nend\n```", Reference(4.0), cfg())
    assert quadratic_only.matched  # a quadratic term is a variable term


@pytest.mark.slow
def test_a_code_answer_that_only_restates_the_optimum():
    """Through the real sandbox: the captured model's objective is a constant."""
    code = "import gurobipy as gp\nm = gp.Model()\nx = m.addVar(ub=3, name='x')\nm.addConstr(x <= 2)\nm.setObjective(11, gp.GRB.MAXIMIZE)\nm.optimize()\n"
    r = score_answer(f"```python\n{code}```", Reference(11.0), cfg())
    assert (r.status, r.objective, r.matched) == ("optimal", pytest.approx(11.0), False)
    assert r.breakdown == {"format": 1.0, "solved": 1.0, "answer": 0.0} and "only restates a number" in r.reason
    derived = score_answer(f"```python\n{code.replace('setObjective(11,', 'setObjective(x + 9,')}```", Reference(11.0), cfg())
    assert derived.matched and derived.reward == 1.0
