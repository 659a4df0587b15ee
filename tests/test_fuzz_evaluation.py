"""Differential fuzzing (tests/fuzzing.py): a fixed-seed slice of tools/fuzz_evaluation.py, and the
examples the long runs found, shrunk by Hypothesis, as regression tests."""

from __future__ import annotations

import math
import tempfile

import pytest
from fuzzing import (Readers, check_program, compare_file, documented, graph_checks, in_process, lp_cases, mean_distance_by_changes, monotone,
                     mps_cases, program_cases)
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from solver_ppo.evaluation import Constraint, Model, Variable, graph_distance, read_model

# The slice: a fixed seed, few enough cases for about 30 s in all; tools/fuzz_evaluation.py runs thousands.
SLICE = dict(database=None, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)


@pytest.fixture(scope="module")
def readers():
    return Readers()


@pytest.mark.slow
def test_files_read_as_generated_and_as_the_solvers_read_them(readers, tmp_path):
    @settings(max_examples=60, **SLICE)
    @seed(30)
    @given(st.one_of(lp_cases(), mps_cases()))
    def check(case):
        verdict = compare_file(case, readers, str(tmp_path))
        assert verdict.kind not in ("crash", "stricter"), (verdict.detail, case.text)
        if verdict.kind == "disagree":
            assert documented(case, verdict), (verdict.detail, verdict.ours, verdict.solvers, case.text)

    check()


@pytest.mark.slow
def test_programs_capture_the_generated_model(readers):
    # the capture in this process (the sandbox runs the same code; tools/fuzz_evaluation.py goes through it)
    @settings(max_examples=12, **SLICE)
    @seed(30)
    @given(program_cases())
    def check(case):
        model, library, _, code = case
        with tempfile.TemporaryDirectory() as workdir:
            why, _ = check_program(model, library, code, in_process, readers, workdir)
        assert why is None, (why, code)

    check()


@pytest.mark.slow
def test_graph_distance_properties():
    checks = []

    @settings(max_examples=60, **SLICE)
    @seed(30)
    @given(graph_checks())
    def check(result):
        assert not result.failures, result
        checks.append(result)

    check()
    means = mean_distance_by_changes(checks)
    assert len(means) == 4 and monotone(means), means


# ----------------------------------------------------------------------------- found by the fuzzer


def test_graph_distance_of_a_quadratic_objective_without_rows():
    # shrunk: the objective's quadratic term looked up its owner row in an empty row map (IndexError)
    model = read_model("Minimize\n obj: [ 2 x ^ 2 ] / 2\nSubject To\nEnd\n")
    other = read_model("Minimize\n obj: [ 4 x ^ 2 ] / 2\nSubject To\nEnd\n")
    assert graph_distance(model, model) == 0.0
    assert 0.0 < graph_distance(model, other) < 1.0


def test_integer_bounds_are_rounded_inwards():
    # shrunk from a gurobipy program: Gurobi's writer stores an integer x >= -8.75 as x >= -8
    def model(vtype: str, lb: float) -> Model:
        return Model([Variable("w", vtype, lb, -1.0, 9.0)], [Constraint("c", {"w": -6.25}, ">=", 15.75)])

    assert graph_distance(model("I", -8.75), model("I", -8.0)) == 0.0
    assert graph_distance(model("C", -8.75), model("C", -8.0)) > 0.0
    assert graph_distance(model("I", -8.75), model("I", -7.0)) > 0.0


def test_mps_marker_integer_without_bounds_is_binary():
    # shrunk: SCIP, Gurobi, COPT and HiGHS give an integer column of a MARKER block with no
    # BOUNDS entry the upper bound 1; any bound entry (here PL) keeps it unbounded above
    text = ("NAME fuzz\nROWS\n N obj\n L c1\nCOLUMNS\n y obj -1.25\n y c1 1\n M 'MARKER' 'INTORG'\n v obj -3.25\n v c1 1\n"
            " M 'MARKER' 'INTEND'\nRHS\n RHS c1 10\n{bounds}ENDATA\n")
    binary = read_model(text.format(bounds=""), "mps").variables[1]
    assert (binary.vtype, binary.lb, binary.ub) == ("I", 0.0, 1.0)
    general = read_model(text.format(bounds="BOUNDS\n PL BND v\n"), "mps").variables[1]
    assert (general.vtype, general.lb, general.ub) == ("I", 0.0, math.inf)


def test_pyomo_capture_keeps_a_variable_no_row_uses(tmp_path):
    # shrunk from a pyomo program: its MPS writer left out a declared variable that neither the
    # objective nor a row uses, so the captured model had one variable less than the program
    from solver_ppo.evaluation.capture import run_captured

    code = ("import pyomo.environ as pyo\nm = pyo.ConcreteModel()\nm.x = pyo.Var(['a', 'b'], bounds=(0, 4))\n"
            "m.obj = pyo.Objective(expr=m.x['a'], sense=pyo.maximize)\npyo.SolverFactory('glpk').solve(m)\n")
    out = run_captured(code, str(tmp_path))
    assert out.status == "captured", out.reason
    model = read_model(out.model_text, out.fmt)
    assert sorted((v.name, v.lb, v.ub, v.obj) for v in model.variables) == [("x(a)", 0.0, 4.0, 1.0), ("x(b)", 0.0, 4.0, 0.0)]
