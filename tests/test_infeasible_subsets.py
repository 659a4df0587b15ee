"""Infeasible subsets are irreducible: each subset that feedback returns is infeasible alone, and
dropping any one of its rows or bounds makes it feasible, checked by re-solving with SCIP.

The subsets come from the public path (`score_answer` with feedback); the check rebuilds the
answer's model from the names the subset gives (rows as `row_names` shows them, bounds as
`x >= 1`, `x <= 2`, `x = 3`), with every other bound dropped and integrality kept.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest

from solver_ppo.evaluation import EvaluationConfig, Reference, score_answer
from solver_ppo.evaluation.config import SolverLimits
from solver_ppo.evaluation.model import INF, Model, read_model, row_names
from solver_ppo.evaluation.solve import solve_model

FEEDBACK = EvaluationConfig(feedback=True)
LIMITS = SolverLimits()
_BOUND = re.compile(r"^(?P<name>\S+) (?P<sense>>=|<=|=) (?P<value>\S+)$")


def subset_model(model: Model, members: list[str]) -> Model:
    """The answer's rows named in `members` and only the bounds `members` names (integer types kept)."""
    index = {name: i for i, name in enumerate(row_names(model))}
    rows, bounds = [], []
    for member in members:
        if member in index:
            rows.append(model.constraints[index[member]])
            continue
        bound = _BOUND.match(member)
        assert bound, f"subset member {member!r} is neither a row of the answer nor a bound"
        bounds.append((bound["name"], bound["sense"], float(bound["value"])))
    variables = {v.name: replace(v, vtype="I" if v.vtype == "B" else v.vtype, lb=-INF, ub=INF, obj=0.0) for v in model.variables}
    for name, sense, value in bounds:
        v = variables[name]
        if sense in (">=", "="):
            v.lb = value
        if sense in ("<=", "="):
            v.ub = value
    return Model(list(variables.values()), rows)


def assert_irreducible(model: Model, members: list[str]) -> None:
    """The members alone are infeasible, and without any one of them they are feasible."""
    status = solve_model(subset_model(model, members), LIMITS).status
    assert status == "infeasible", f"the subset {members} alone is {status}, not infeasible"
    for k, dropped in enumerate(members):
        rest = members[:k] + members[k + 1:]
        status = solve_model(subset_model(model, rest), LIMITS).status
        assert status in ("optimal", "unbounded"), f"without {dropped!r} the rest of {members} is still {status}: not irreducible"


def every_row_and_bound(model: Model) -> list[str]:
    bounds = [f"{v.name} {s} {b:g}" for v in model.variables for s, b in ((">=", v.lb), ("<=", v.ub)) if math.isfinite(b)]
    return row_names(model) + bounds


# Each instance is infeasible, with rows and bounds that no conflict needs.
INSTANCES = {
    # LP: a ranged row against an equality row; `spare` and z's bounds are not needed
    "lp-ranged-equality": ("lp", "Minimize\n obj: x + y + z\nSubject To\n band: 2 <= x + y <= 3\n fix: x + y = 5\n"
                           " spare: x - z <= 4\n spare2: y + z >= -10\nBounds\n z <= 7\nEnd"),
    # LP: the equality's right-hand side is only out of reach with x's upper bound and y's lower bound
    "lp-bounds-needed": ("lp", "Maximize\n obj: x\nSubject To\n total: x - y = 9\n other: x + y <= 100\n"
                         "Bounds\n x <= 4\n -2 <= y <= 6\nEnd"),
    # MIP: 2a - 2b = 1 has no integer solution: one row, no bound
    "mip-parity": ("lp", "Minimize\n obj: a + b + c\nSubject To\n odd: 2 a - 2 b = 1\n lone: a + c >= 2\n"
                   "Bounds\n a <= 10\n b <= 10\nGenerals\n a b c\nEnd"),
    # MIP: three binaries sum to 2 but two of them sum to at most 0, so the third must be 2 (> its bound 1)
    "mip-binaries": ("lp", "Maximize\n obj: p + q + r + s\nSubject To\n pick: p + q + r = 2\n none: p + q <= 0\n"
                     " free: s <= 1\nBinaries\n p q r s\nEnd"),
    # MIP: a ranged row over integers with no integer inside its range
    "mip-ranged-integers": ("lp", "Minimize\n obj: n\nSubject To\n gap: 0.2 <= 5 n - 5 m <= 0.8\n big: n + m <= 50\n"
                            "Generals\n n m\nEnd"),
    # MPS: a RANGES row against an equality row and an upper bound
    "mps-ranges": ("mps", "NAME t\nROWS\n N obj\n G lo\n E eq\n L cap\nCOLUMNS\n x obj 1 lo 1\n x eq 1 cap 1\n"
                   " y obj 1 lo 1\n y eq 1\nRHS\n rhs lo 1 eq 8\n rhs cap 50\nRANGES\n rng lo 3\n"
                   "BOUNDS\n UP bnd x 2\nENDATA"),
}


@pytest.mark.parametrize("name", list(INSTANCES))
def test_each_returned_subset_is_infeasible_and_irreducible(name):
    fmt, text = INSTANCES[name]
    result = score_answer(f"```{fmt}\n{text}\n```", Reference(None, True), FEEDBACK)
    assert result.status == "infeasible"
    assert result.infeasible_subset, f"no subset found for {name}: {result.reason}"
    model = read_model(text, fmt)
    assert len(result.infeasible_subset) < len(every_row_and_bound(model))  # each instance has members no conflict needs
    assert_irreducible(model, result.infeasible_subset)


@pytest.mark.parametrize("name", ["lp-ranged-equality", "mip-binaries", "mps-ranges"])
def test_every_row_and_bound_is_not_an_irreducible_subset(name):
    """The check itself fails on a subset that is infeasible but not minimal."""
    fmt, text = INSTANCES[name]
    model = read_model(text, fmt)
    with pytest.raises(AssertionError, match="still infeasible: not irreducible"):
        assert_irreducible(model, every_row_and_bound(model))


def test_a_subset_missing_a_needed_member_is_not_infeasible():
    """The check fails when a needed member is left out: the rest alone is feasible."""
    fmt, text = INSTANCES["lp-bounds-needed"]
    model = read_model(text, fmt)
    subset = score_answer(f"```{fmt}\n{text}\n```", Reference(None, True), FEEDBACK).infeasible_subset
    with pytest.raises(AssertionError, match="alone is optimal, not infeasible"):
        assert_irreducible(model, subset[1:])
