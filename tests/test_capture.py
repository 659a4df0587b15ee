"""Capturing the model a solver-library program builds (solver_ppo.evaluation.capture), with the real
libraries: each idiom's captured model equals the same model written in LP (graph distance 0,
same SCIP optimum), and broken code ends with a status and a one-line reason.

Every capture runs in a forked child, so whatever the answer's code does stays out of the test
process."""

from __future__ import annotations

import multiprocessing
import sys

import pytest

from solver_ppo.evaluation.capture import CaptureOutcome, detect_library, orient, run_captured
from solver_ppo.evaluation.config import SolverLimits
from solver_ppo.evaluation.graph import graph_distance
from solver_ppo.evaluation.model import read_model
from solver_ppo.evaluation.solve import solve_model


def _child(conn, code, workdir, limits, blocked):
    for name in blocked:
        sys.modules[name] = None  # Python's way to make a module unimportable
    conn.send(run_captured(code, workdir, limits))
    conn.close()


def capture(code: str, workdir, limits: SolverLimits | None = None, blocked: tuple = ()) -> CaptureOutcome:
    """run_captured in a forked child."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, code, str(workdir), limits, blocked))
    proc.start()
    child.close()
    outcome = parent.recv()
    proc.join(30)
    return outcome


# ----------------------------------------------------------------------------- two models in LP

SUPPLY = {"A": 20, "B": 30}
DEMAND = {"1": 10, "2": 15, "3": 20}
COST = {("A", "1"): 4, ("A", "2"): 6, ("A", "3"): 9, ("B", "1"): 5, ("B", "2"): 3, ("B", "3"): 8}

TRANSPORT_LP = "minimize\n obj: " + " + ".join(f"{c} x_{s}_{t}" for (s, t), c in COST.items()) + "\nsubject to\n" + "".join(
    f" supply_{s}: " + " + ".join(f"x_{s}_{t}" for t in DEMAND) + f" <= {SUPPLY[s]}\n" for s in SUPPLY) + "".join(
    f" demand_{t}: " + " + ".join(f"x_{s}_{t}" for s in SUPPLY) + f" >= {DEMAND[t]}\n" for t in DEMAND) + \
    "general\n " + " ".join(f"x_{s}_{t}" for s, t in COST) + "\nend\n"

VALUE = {"solar": 8, "roads": 11, "school": 6, "park": 4}
WEIGHT = {"solar": 5, "roads": 7, "school": 4, "park": 3}
# binary picks, overtime in [0, 4] at cost 2.5 per unit raises the capacity 14; a fixed bonus 10
KNAPSACK_LP = ("maximize\n obj: " + " + ".join(f"{v} pick_{i}" for i, v in VALUE.items()) + " - 2.5 overtime + 10\n"
               "subject to\n capacity: " + " + ".join(f"{w} pick_{i}" for i, w in WEIGHT.items()) +
               " - overtime <= 14\nbounds\n overtime <= 4\nbinary\n " + " ".join(f"pick_{i}" for i in VALUE) + "\nend\n")

DATA = f"supply = {SUPPLY!r}\ndemand = {DEMAND!r}\ncost = {COST!r}\n"
ITEMS = f"value = {VALUE!r}\nweight = {WEIGHT!r}\n"

PROGRAMS = {
    ("gurobipy", "transport"): DATA + """
import gurobipy as gp
from gurobipy import GRB

m = gp.Model("transport")
x = m.addVars(cost.keys(), vtype=GRB.INTEGER, name="x")
m.addConstrs((x.sum(s, "*") <= supply[s] for s in supply), name="supply")
m.addConstrs((x.sum("*", t) >= demand[t] for t in demand), name="demand")
m.setObjective(x.prod(cost), GRB.MINIMIZE)
m.optimize()
print(m.ObjVal)
""",
    ("gurobipy", "knapsack"): ITEMS + """
import gurobipy as gp
from gurobipy import GRB, LinExpr, quicksum

m = gp.Model()
pick = m.addVars(value, vtype=GRB.BINARY, name="pick")
overtime = m.addVar(ub=4, name="overtime")
m.addConstr(quicksum(weight[i] * pick[i] for i in value) - overtime <= 14, "capacity")
obj = LinExpr()
for i in value:
    obj.addTerms(value[i], pick[i])
obj += -2.5 * overtime + 10
m.setObjective(obj)
m.ModelSense = GRB.MAXIMIZE
m.optimize()
""",
    ("coptpy", "transport"): DATA + """
import coptpy as cp
from coptpy import COPT

env = cp.Envr()
m = env.createModel("transport")
x = m.addVars(list(cost), vtype=COPT.INTEGER, nameprefix="x")
m.addConstrs((x.sum(s, "*") <= supply[s] for s in supply), nameprefix="supply")
m.addConstrs((x.sum("*", t) >= demand[t] for t in demand), nameprefix="demand")
m.setObjective(cp.quicksum(cost[k] * x[k] for k in cost), sense=COPT.MINIMIZE)
m.solve()
""",
    ("coptpy", "knapsack"): ITEMS + """
from coptpy import COPT, Envr, LinExpr

m = Envr().createModel()
pick = {i: m.addVar(vtype=COPT.BINARY, name=f"pick_{i}") for i in value}
overtime = m.addVar(lb=0, ub=4, name="overtime")
m.addConstr(LinExpr(list(pick.values()), [weight[i] for i in pick]) - overtime <= 14, name="capacity")
m.setObjective(sum(value[i] * pick[i] for i in value) - 2.5 * overtime + 10, COPT.MAXIMIZE)
m.solveLP()
""",
    ("pyscipopt", "transport"): DATA + """
from pyscipopt import Model, quicksum

m = Model("transport")
x = {(s, t): m.addVar(name=f"x_{s}_{t}", vtype="INTEGER") for s, t in cost}
for s in supply:
    m.addCons(quicksum(x[s, t] for t in demand) <= supply[s], name=f"supply_{s}")
for t in demand:
    m.addCons(quicksum(x[s, t] for s in supply) >= demand[t], name=f"demand_{t}")
m.setObjective(quicksum(cost[k] * x[k] for k in cost), "minimize")
m.optimize()
print(m.getObjVal())
""",
    ("pyscipopt", "knapsack"): ITEMS + """
import pyscipopt as scip

m = scip.Model()
pick = {i: m.addVar(f"pick[{i}]", vtype="B") for i in value}
overtime = m.addVar("overtime", lb=0, ub=4)
m.addCons(scip.quicksum(weight[i] * pick[i] for i in value) - overtime <= 14, "capacity")
m.setObjective(scip.quicksum(value[i] * pick[i] for i in value) - 2.5 * overtime + 10, sense="maximize")
try:
    m.optimize()
except Exception:
    print("solver failed")
""",
    ("pulp", "transport"): DATA + """
import pulp

prob = pulp.LpProblem("transport", pulp.LpMinimize)
x = pulp.LpVariable.dicts("x", list(cost), lowBound=0, cat="Integer")
prob += pulp.lpSum(cost[k] * x[k] for k in cost)
for s in supply:
    prob += pulp.lpSum(x[s, t] for t in demand) <= supply[s], f"supply_{s}"
for t in demand:
    prob += pulp.lpSum(x[s, t] for s in supply) >= demand[t], f"demand_{t}"
prob.solve(pulp.PULP_CBC_CMD(msg=False))
print(pulp.value(prob.objective))
""",
    ("pulp", "knapsack"): ITEMS + """
from pulp import LpBinary, LpMaximize, LpProblem, LpVariable, lpSum

prob = LpProblem("knapsack", LpMaximize)
pick = LpVariable.dicts("pick", value, cat=LpBinary)
overtime = LpVariable("overtime", 0, 4)
prob += lpSum(value[i] * pick[i] for i in value) - 2.5 * overtime + 10, "total_value"
prob += lpSum(weight[i] * pick[i] for i in value) - overtime <= 14, "capacity"
prob.solve()
""",
    ("pyomo", "transport"): DATA + """
import pyomo.environ as pyo

m = pyo.ConcreteModel()
m.S = pyo.Set(initialize=list(supply))
m.T = pyo.Set(initialize=list(demand))
m.cost = pyo.Param(m.S, m.T, initialize=cost)
m.supply = pyo.Param(m.S, initialize=supply)
m.demand = pyo.Param(m.T, initialize=demand)
m.x = pyo.Var(m.S, m.T, domain=pyo.NonNegativeIntegers)

def supply_rule(m, s):
    return sum(m.x[s, t] for t in m.T) <= m.supply[s]

m.supply_limit = pyo.Constraint(m.S, rule=supply_rule)
m.demand_met = pyo.Constraint(m.T, rule=lambda m, t: sum(m.x[s, t] for s in m.S) >= m.demand[t])
m.obj = pyo.Objective(expr=sum(m.cost[s, t] * m.x[s, t] for s in m.S for t in m.T), sense=pyo.minimize)
result = pyo.SolverFactory("glpk").solve(m)
print(pyo.value(m.obj))
""",
    ("pyomo", "knapsack"): ITEMS + """
from pyomo.environ import (Binary, ConcreteModel, Constraint, Objective, SolverFactory, Var, maximize,
                           NonNegativeReals)

m = ConcreteModel()
m.pick = Var(list(value), within=Binary)
m.overtime = Var(within=NonNegativeReals, bounds=(0, 4))
m.capacity = Constraint(expr=sum(weight[i] * m.pick[i] for i in value) - m.overtime <= 14)
m.total = Objective(expr=sum(value[i] * m.pick[i] for i in value) - 2.5 * m.overtime + 10, sense=maximize)
solver = SolverFactory("cbc")
solver.options["seconds"] = 10
solver.solve(m, tee=True)
""",
    ("scipy", "transport"): DATA + """
import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

keys = list(cost)
c = np.array([cost[k] for k in keys])
A = np.array([[1 if k[0] == s else 0 for k in keys] for s in supply] + [[1 if k[1] == t else 0 for k in keys] for t in demand])
lower = [-np.inf] * len(supply) + list(demand.values())
upper = list(supply.values()) + [np.inf] * len(demand)
res = milp(c, constraints=LinearConstraint(A, lower, upper), integrality=np.ones(len(keys)), bounds=Bounds(0, np.inf))
print(res.fun)
""",
}
# scipy's linprog has no constant: its knapsack reads without the bonus and with the sign flipped
KNAPSACK_LINPROG = ITEMS + """
from scipy.optimize import linprog

items = list(value)
res = linprog(c=[-value[i] for i in items] + [2.5], A_ub=[[weight[i] for i in items] + [-1]], b_ub=[14],
              bounds=[(0, 1)] * len(items) + [(0, 4)], integrality=[1] * len(items) + [0])
print(-res.fun + 10)
"""
REFERENCES = {"transport": TRANSPORT_LP, "knapsack": KNAPSACK_LP}


def assert_same_model(outcome: CaptureOutcome, lp: str, reference_sense: str | None = None) -> None:
    assert outcome.status == "captured", outcome.reason
    captured = read_model(outcome.model_text, outcome.fmt)
    if outcome.sense_free:
        captured = orient(captured, reference_sense)
    reference = read_model(lp)
    assert graph_distance(captured, reference) == 0.0
    limits = SolverLimits()
    got, want = solve_model(captured, limits), solve_model(reference, limits)
    assert got.status == want.status == "optimal"
    assert got.objective == pytest.approx(want.objective, abs=1e-9)


@pytest.mark.parametrize("library,model", sorted(PROGRAMS))
def test_idioms_capture_the_model_the_lp_states(library, model, tmp_path):
    outcome = capture(PROGRAMS[library, model], tmp_path)
    assert outcome.library == library
    assert outcome.fmt == ("lp" if library == "scipy" else "mps")
    assert_same_model(outcome, REFERENCES[model])
    assert list(tmp_path.iterdir()) == []  # the captured file is removed


def test_optima_of_the_two_models():
    limits = SolverLimits()
    assert solve_model(read_model(TRANSPORT_LP), limits).objective == pytest.approx(250)
    # roads + school + park (weight 14, value 21) beats solar + roads + park with overtime (23 - 2.5)
    assert solve_model(read_model(KNAPSACK_LP), limits).objective == pytest.approx(31)


def test_scipy_maximization_is_oriented_to_the_reference_sense(tmp_path):
    outcome = capture(KNAPSACK_LINPROG, tmp_path)
    assert outcome.sense_free and outcome.library == "scipy"
    as_written = read_model(outcome.model_text, outcome.fmt)
    assert as_written.sense == "min"
    assert solve_model(as_written, SolverLimits()).objective == pytest.approx(-21)
    no_bonus = KNAPSACK_LP.replace(" + 10\n", "\n")
    assert_same_model(outcome, no_bonus, reference_sense="max")
    assert orient(read_model(outcome.model_text), "min").sense == "min"  # a min reference: unchanged


def test_linprog_bounds_equalities_and_free_variables(tmp_path):
    code = """
import numpy as np
from scipy import optimize
res = optimize.linprog(np.array([-1.0, -2.0, 0.5]), A_ub=[[1, 1, 0]], b_ub=[10], A_eq=[[1, 0, 1]], b_eq=[3],
                       bounds=[(None, None), (-1, 4), (0, None)])
"""
    lp = ("minimize\n obj: - x0 - 2 x1 + 0.5 x2\nsubject to\n c0: x0 + x1 <= 10\n c1: x0 + x2 = 3\n"
          "bounds\n x0 free\n -1 <= x1 <= 4\nend\n")
    assert_same_model(capture(code, tmp_path), lp)


def test_exception_swallowing_code_is_still_stopped_at_the_solve(tmp_path):
    code = """
import pulp
prob = pulp.LpProblem("p", pulp.LpMaximize)
x = pulp.LpVariable("x", 0, 3)
prob += 2 * x
prob += x <= 2, "cap"
for attempt in range(3):
    try:
        prob.solve()
    except:  # a bare except catches BaseException: the first solve call still counts
        pass
    prob += x <= 1, f"tighter_{attempt}"
"""
    assert_same_model(capture(code, tmp_path), "maximize\n obj: 2 x\nsubject to\n cap: x <= 2\nbounds\n x <= 3\nend\n")


@pytest.mark.parametrize("code,status,reason", [
    ("import pulp\nprob = pulp.LpProblem('p')\nx = [1, 2\n", "syntax_error", "SyntaxError: '[' was never closed (answer line 3)"),
    ("import gurobipy as gp\n\nm = gp.Model()\nrate = 3 / 0\nm.optimize()\n", "exception",
     "ZeroDivisionError: division by zero (answer line 4)"),
    ("from pyscipopt import Model\n\ndef build():\n    return Model().addVar(nme='x')\n\nbuild()\n", "exception",
     "(answer line 4)"),
    ("import pulp\nprint('Optimal value: 42')\n", "no_solve",
     "no solve call: the code ended without calling prob.solve() (pulp)"),
    ("import sys\nimport coptpy\nsys.exit(0)\n", "no_solve", "the code exited (sys.exit(0)) before a solve call"),
    ("from ortools.linear_solver import pywraplp\n", "unsupported", "it imports ortools, which is not one of the supported"),
    ("print(42)\n", "unsupported", "no solver library is imported"),
])
def test_reasons(code, status, reason, tmp_path):
    outcome = capture(code, tmp_path)
    assert outcome.status == status
    assert reason in outcome.reason
    assert "\n" not in outcome.reason


def test_missing_library_names_the_install(tmp_path):
    outcome = capture("import coptpy\nm = coptpy.Envr().createModel()\nm.solve()\n", tmp_path, blocked=("coptpy",))
    assert (outcome.status, outcome.reason) == ("missing_library", "coptpy is not installed: pip install coptpy")


def test_too_large_is_refused_before_writing(tmp_path):
    code = "import gurobipy as gp\nm = gp.Model()\nx = m.addVars(30, 2, name='x')\nm.addConstrs(x.sum(i, '*') <= 1 for i in range(30))\nm.optimize()\n"
    outcome = capture(code, tmp_path, SolverLimits(max_vars=50))
    assert (outcome.status, outcome.reason) == ("too_large", "model has 60 variables, over the limit of 50")
    outcome = capture(code, tmp_path, SolverLimits(max_cons=20))
    assert (outcome.status, outcome.reason) == ("too_large", "model has 30 constraints, over the limit of 20")


def test_pyomo_objective_constant_is_folded_back(tmp_path):
    code = ("import pyomo.environ as pyo\nm = pyo.ConcreteModel()\nm.x = pyo.Var(bounds=(0, 2))\n"
            "m.o = pyo.Objective(expr=3 * m.x + 7, sense=pyo.maximize)\npyo.SolverFactory('highs').solve(m)\n")
    outcome = capture(code, tmp_path)
    assert "ONE_VAR_CONSTANT" not in outcome.model_text
    model = read_model(outcome.model_text)
    assert (model.n_vars, model.n_cons, model.obj_constant) == (1, 0, 7.0)
    assert solve_model(model, SolverLimits()).objective == pytest.approx(13.0)


def test_hooks_are_restored_after_a_run(tmp_path):
    import gurobipy
    import pulp
    import pyscipopt
    import scipy.optimize

    before = (pyscipopt.Model, gurobipy.Model.optimize, pulp.LpProblem.solve, scipy.optimize.linprog)
    assert run_captured(PROGRAMS["pulp", "transport"], str(tmp_path)).status == "captured"
    assert run_captured(PROGRAMS["pyscipopt", "knapsack"], str(tmp_path)).status == "captured"
    assert (pyscipopt.Model, gurobipy.Model.optimize, pulp.LpProblem.solve, scipy.optimize.linprog) == before


def test_detect_library():
    assert detect_library("import numpy as np\nfrom scipy.optimize import linprog\nimport gurobipy as gp\n") == "gurobipy"
    assert detect_library("import numpy as np\nfrom scipy.optimize import milp\n") == "scipy"
    assert detect_library("from pyomo.environ import *\n") == "pyomo"
    assert detect_library("import pulp\nx = (\n") == "pulp"  # found even when the code does not parse
    assert detect_library("print('import gurobipy')\n") is None


def test_an_integer_in_zero_one_is_a_binary_for_the_graph():
    """Writers state binaries as BV bounds or as integers with an upper bound of 1 (coptpy)."""
    as_binary = read_model("maximize\n obj: 3 x + y\nsubject to\n c: x + y <= 1\nbinary\n x\nend\n")
    as_integer = read_model("maximize\n obj: 3 x + y\nsubject to\n c: x + y <= 1\nbounds\n x <= 1\ngeneral\n x\nend\n")
    assert graph_distance(as_binary, as_integer) == 0.0
    wider = read_model("maximize\n obj: 3 x + y\nsubject to\n c: x + y <= 1\nbounds\n x <= 2\ngeneral\n x\nend\n")
    assert graph_distance(as_binary, wider) > 0.0


@pytest.fixture(scope="module")
def sandbox():
    from solver_ppo.evaluation.sandbox import Sandbox

    with Sandbox("auto") as box:
        yield box


@pytest.mark.parametrize("library,model", [("gurobipy", "transport"), ("coptpy", "knapsack"), ("pyscipopt", "transport"),
                                           ("pulp", "knapsack"), ("pyomo", "transport"), ("scipy", "transport")])
def test_idioms_through_the_real_sandbox(library, model, sandbox):
    outcome = sandbox.run(PROGRAMS[library, model])
    assert outcome.library == library
    assert_same_model(outcome, REFERENCES[model])


QUADRATIC = {
    "gurobipy": """
import gurobipy as gp
m = gp.Model()
x = m.addVar(ub=3, name="x")
y = m.addVar(ub=3, name="y")
m.addConstr(x * y <= 2, "q")
m.setObjective(x + y - x * x, gp.GRB.MAXIMIZE)
m.optimize()
""",
    "coptpy": """
import coptpy as cp
m = cp.Envr().createModel()
x = m.addVar(ub=3, name="x")
y = m.addVar(ub=3, name="y")
m.addQConstr(x * y <= 2, "q")
m.setObjective(x + y - x * x, cp.COPT.MAXIMIZE)
m.solve()
""",
    "pyomo": """
import pyomo.environ as pyo
m = pyo.ConcreteModel()
m.x = pyo.Var(bounds=(0, 3))
m.y = pyo.Var(bounds=(0, 3))
m.q = pyo.Constraint(expr=m.x * m.y <= 2)
m.o = pyo.Objective(expr=m.x + m.y - m.x ** 2, sense=pyo.maximize)
pyo.SolverFactory("ipopt").solve(m)
""",
}


def test_quadratic_models_of_three_libraries_are_one_graph(tmp_path):
    """A row with only a quadratic term (x * y <= 2) and a quadratic objective, in each library's
    MPS dialect (QUADOBJ, QMATRIX, QCMATRIX): the same model, optimum x = 0.5, y = 3."""
    models = {lib: read_model(capture(code, tmp_path).model_text) for lib, code in QUADRATIC.items()}
    for a in models.values():
        for b in models.values():
            assert graph_distance(a, b) == 0.0
        assert solve_model(a, SolverLimits()).objective == pytest.approx(3.25, abs=1e-5)
