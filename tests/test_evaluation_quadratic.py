"""Quadratic objectives and constraints end to end: every writer's dialect (LP and MPS) reads to
the same model, SCIP solves it to the hand-computed optimum (nonconvex and with integers too), and
the graph distance carries the quadratic terms (0 up to renaming, positive for a changed term,
validated against networkx's exact graph edit distance on small pairs)."""

import copy
import math
import random

import networkx as nx
import pytest
from scipy.stats import spearmanr

from solver_ppo.evaluation import Constraint, Model, SolverLimits, Variable, equivalent, graph_distance, model_graph, read_model, solve_model, to_lp_text
from solver_ppo.evaluation.graph import edit_costs, graph_size
from solver_ppo.evaluation.model import quad_key
from builders import renamed_shuffled

# The test model, nonconvex (x² - 3xy is indefinite) with an integer y:
#   min x² - 3xy + y + 2  s.t.  x + y >= 1,  (x + y)² <= 4,  -5 <= x <= 5,  y integer in [-5, 5].
# By hand: x + y lies in [1, 2]; for y = 1, x in [0, 1] and x² - 3x + 3 is least at x = 1 (value 1);
# y = 0 gives x² + 2 >= 3, y = 2 gives x² - 6x + 4 >= 4 on [-1, 0], y = -1 gives >= 11: optimum 1 at (1, 1).
OPTIMUM = 1.0


def write_gurobi(path, fmt):
    import gurobipy as gp

    with gp.Env(params={"OutputFlag": 0}) as env, gp.Model("t", env=env) as m:
        x = m.addVar(lb=-5, ub=5, name="x")
        y = m.addVar(lb=-5, ub=5, vtype=gp.GRB.INTEGER, name="y")
        m.addConstr(x + y >= 1, name="l")
        m.addQConstr(x * x + 2 * x * y + y * y <= 4, name="q")
        m.setObjective(x * x - 3 * x * y + y + 2, gp.GRB.MINIMIZE)
        m.write(str(path))


def write_copt(path, fmt):
    import coptpy as cp

    env = cp.Envr()
    m = env.createModel("t")
    m.setParam("Logging", 0)
    x = m.addVar(lb=-5, ub=5, name="x")
    y = m.addVar(lb=-5, ub=5, vtype=cp.COPT.INTEGER, name="y")
    m.addConstr(x + y >= 1, name="l")
    m.addQConstr(x * x + 2 * x * y + y * y <= 4, name="q")
    m.setObjective(x * x - 3 * x * y + y + 2, cp.COPT.MINIMIZE)
    m.write(str(path))


def write_scip(path, fmt):
    from pyscipopt import Model as ScipModel
    from pyscipopt.recipes.nonlinear import set_nonlinear_objective

    m = ScipModel()
    m.hideOutput()
    x = m.addVar("x", lb=-5, ub=5)
    y = m.addVar("y", vtype="I", lb=-5, ub=5)
    m.addCons(x + y >= 1, name="l")
    m.addCons(x * x + 2 * x * y + y * y <= 4, name="q")
    set_nonlinear_objective(m, x * x - 3 * x * y + y + 2, "minimize")  # SCIP's objective is linear: an auxiliary variable
    m.writeProblem(str(path), verbose=False)


def write_pyomo(path, fmt):
    import pyomo.environ as pe

    m = pe.ConcreteModel()
    m.x = pe.Var(bounds=(-5, 5))
    m.y = pe.Var(bounds=(-5, 5), domain=pe.Integers)
    m.l = pe.Constraint(expr=m.x + m.y >= 1)
    m.q = pe.Constraint(expr=m.x**2 + 2 * m.x * m.y + m.y**2 <= 4)
    m.o = pe.Objective(expr=m.x**2 - 3 * m.x * m.y + m.y + 2)
    m.write(str(path), io_options={"symbolic_solver_labels": True})


# CPLEX's dialects as its file-format manual states them: `[ ... ] / 2` in the objective, QMATRIX
# with both triangles of Q for ½ x'Qx, QCMATRIX with the full Q of x'Qx.
CPLEX_LP = """\\ CPLEX LP
Minimize
 obj: y + [ 2 x ^ 2 - 6 x * y ] / 2 + 2
Subject To
 l: x + y >= 1
 q: [ x ^ 2 + 2 x * y + y ^ 2 ] <= 4
Bounds
 -5 <= x <= 5
 -5 <= y <= 5
General
 y
End
"""
CPLEX_MPS = """NAME          t
ROWS
 N  obj
 G  l
 L  q
COLUMNS
    x         l                    1
    MARKER                 'MARKER'                 'INTORG'
    y         obj                  1   l                    1
    MARKER                 'MARKER'                 'INTEND'
RHS
    rhs       obj                 -2   l                    1
    rhs       q                    4
BOUNDS
 LO bnd       x                   -5
 UP bnd       x                    5
 LO bnd       y                   -5
 UP bnd       y                    5
QMATRIX
    x         x                    2
    x         y                   -3
    y         x                   -3
QCMATRIX   q
    x         x                    1
    x         y                    1
    y         x                    1
    y         y                    1
ENDATA
"""


def written(writer, fmt, tmp_path) -> str:
    path = tmp_path / f"model.{fmt}"
    writer(path, fmt)
    return path.read_text()


DIALECTS = {
    "gurobi": write_gurobi,
    "copt": write_copt,
    "scip": write_scip,
    "pyomo (CPLEX dialect)": write_pyomo,
}


@pytest.mark.parametrize("fmt", ["lp", "mps"])
@pytest.mark.parametrize("writer", list(DIALECTS))
def test_every_writers_quadratic_dialect_solves_to_the_hand_computed_optimum(writer, fmt, tmp_path):
    text = written(DIALECTS[writer], fmt, tmp_path)
    assert ("[" in text) if fmt == "lp" else ("QCMATRIX" in text)
    m = read_model(text)
    assert m.is_quadratic
    q = next(c for c in m.constraints if c.quad)
    assert q.quad == {("x", "x"): 1.0, ("x", "y"): 2.0, ("y", "y"): 1.0} and (q.sense, q.rhs) == ("<=", 4.0)
    if writer != "scip":  # SCIP writes the objective as `min t` with t >= x² - 3xy + y + 2 as a row
        assert m.quad_obj == {("x", "x"): 1.0, ("x", "y"): -3.0}
    r = solve_model(m, SolverLimits())
    assert r.status == "optimal" and r.objective == pytest.approx(OPTIMUM, abs=1e-6)
    assert (r.values["x"], r.values["y"]) == (pytest.approx(1.0, abs=1e-6), pytest.approx(1.0))


def test_cplex_dialects_from_its_manual():
    lp, mps = read_model(CPLEX_LP), read_model(CPLEX_MPS)
    assert lp == read_model(to_lp_text(lp))  # the writer's brackets read back to the same model
    assert lp.quad_obj == mps.quad_obj == {("x", "x"): 1.0, ("x", "y"): -3.0}
    assert graph_distance(lp, mps) == 0.0 and equivalent(lp, mps)
    for m in (lp, mps):
        assert solve_model(m, SolverLimits()).objective == pytest.approx(OPTIMUM, abs=1e-6)


def test_quadobj_is_the_upper_triangle_and_qmatrix_both():
    """The same ½ x'Qx objective, Q = [[2, -3], [-3, 0]]: QUADOBJ lists (x, y) once, QMATRIX twice."""
    head = "NAME t\nROWS\n N obj\n G l\nCOLUMNS\n x l 1\n y obj 1 l 1\nRHS\n rhs l 1\nBOUNDS\n UP b x 5\n UP b y 5\n"
    upper = read_model(head + "QUADOBJ\n x x 2\n x y -3\nENDATA\n")
    full = read_model(head + "QMATRIX\n x x 2\n x y -3\n y x -3\nENDATA\n")
    assert upper.quad_obj == full.quad_obj == {("x", "x"): 1.0, ("x", "y"): -3.0}


@pytest.mark.parametrize(
    "text, optimum",
    [
        # convex: min (x - 1)² + (y - 2)² s.t. x + y <= 2, at the projection (0.5, 1.5): 0.5
        ("min -2 x - 4 y + [ 2 x ^ 2 + 2 y ^ 2 ] / 2 + 5\nst\n c: x + y <= 2\nend", 0.5),
        # nonconcave maximum: max x·y s.t. x + y <= 4 (x, y >= 0): 4 at (2, 2)
        ("max [ 2 x * y ] / 2\nst\n c: x + y <= 4\nend", 4.0),
        # nonconvex feasible set: max x + y on the outside of a disc, inside a box: 2 + 2 = 4
        ("max x + y\nst\n ring: [ x ^ 2 + y ^ 2 ] >= 1\nbounds\n x <= 2\n y <= 2\nend", 4.0),
        # integers: min (x - 2.6)² over integer x in [0, 5]: x = 3, 0.16
        ("min -5.2 x + [ 2 x ^ 2 ] / 2 + 6.76\nst\n c: x <= 5\ngeneral\n x\nend", 0.16),
        # a quadratic equality: min x + y with x·y = 4 (x, y >= 0): 4 at (2, 2)
        ("min x + y\nst\n e: [ x * y ] = 4\nend", 4.0),
        # products written without brackets (as code and people write them) are read as such
        ("min x + y\nst\n e: x * y = 4\nend", 4.0),
    ],
)
def test_scip_solves_quadratic_models_to_hand_computed_optima(text, optimum):
    r = solve_model(read_model(text), SolverLimits())
    assert r.status == "optimal" and r.objective == pytest.approx(optimum, abs=1e-5)
    assert "quadratic_objective" not in r.values  # the auxiliary variable is not reported


def test_quadratic_unbounded_and_infeasible():
    assert solve_model(read_model("max [ 2 x ^ 2 ] / 2\nst\n c: x >= 1\nend"), SolverLimits()).status == "unbounded"
    assert solve_model(read_model("min x\nst\n c: [ x ^ 2 + y ^ 2 ] <= -1\nend"), SolverLimits()).status == "infeasible"


# ----------------------------------------------------------------------------- graph distance

QUAD = """Minimize
 obj: 2 x - y + [ 2 x ^ 2 + 4 x * y - 2 z ^ 2 ] / 2 + 3
Subject To
 c1: x + y + z <= 10
 c2: x - y + [ x * z + 3 y ^ 2 ] >= -3
 c3: [ x * y ] = 6
 c4: y - z + [ z ^ 2 ] <= 4
Bounds
 x <= 5
 -3 <= z <= 3
Generals
 z
End
"""


def test_zero_up_to_renaming_reordering_negation_and_scaling():
    base = read_model(QUAD)
    assert base.quad_obj == {("x", "x"): 1.0, ("x", "y"): 2.0, ("z", "z"): -1.0}
    for seed in range(5):
        other = renamed_shuffled(base, seed, row_name="same")
        assert graph_distance(base, other) == 0.0 and graph_distance(other, base) == 0.0
        assert equivalent(base, other)
    assert graph_distance(base, read_model(to_lp_text(base))) == 0.0


QUAD_EDITS = {
    "objective quadratic coefficient": lambda m: m.quad_obj.__setitem__(("x", "y"), 3.0),
    "objective term removed": lambda m: m.quad_obj.pop(("z", "z")),
    "objective term added": lambda m: m.quad_obj.__setitem__(("y", "z"), 1.0),
    "row quadratic coefficient": lambda m: m.constraints[1].quad.__setitem__(("y", "y"), 4.0),
    "square becomes a product": lambda m: (m.constraints[3].quad.pop(("z", "z")), m.constraints[3].quad.__setitem__(("x", "z"), 1.0)),
    "product on other variables": lambda m: (m.constraints[2].quad.pop(("x", "y")), m.constraints[2].quad.__setitem__(("x", "z"), 1.0)),
    "term moved from a row to the objective": lambda m: (m.constraints[1].quad.pop(("x", "z")), m.quad_obj.__setitem__(("x", "z"), 1.0)),
    "quadratic row made linear": lambda m: m.constraints[3].quad.clear(),
    "sign of the quadratic part of an equality": lambda m: m.constraints[2].quad.__setitem__(("x", "y"), -1.0),
}


@pytest.mark.parametrize("edit", list(QUAD_EDITS))
def test_any_quadratic_difference_is_positive_and_symmetric(edit):
    base = read_model(QUAD)
    other = copy.deepcopy(base)
    QUAD_EDITS[edit](other)
    d = graph_distance(base, other)
    assert 0.0 < d < 1.0
    assert graph_distance(other, base) == d
    assert graph_distance(renamed_shuffled(base, 7, row_name="same"), other) == pytest.approx(d)
    assert not equivalent(base, other)


def test_distance_grows_with_the_size_of_the_quadratic_change():
    base = read_model(QUAD)
    previous = 0.0
    for factor in (1.1, 1.5, 3.0, -1.0):  # the x·y objective coefficient, ever further from 2
        other = copy.deepcopy(base)
        other.quad_obj[("x", "y")] = 2.0 * factor
        d = graph_distance(base, other)
        assert d > previous
        previous = d
    linear = copy.deepcopy(base)
    linear.quad_obj.clear()
    for c in linear.constraints:
        c.quad.clear()
    assert graph_distance(base, linear) > previous  # every quadratic term gone


def small_quadratic_model(rng: random.Random) -> Model:
    n = 2
    variables = [Variable(f"x{j}", rng.choice("CI"), 0.0, rng.choice([math.inf, 4.0]), float(rng.randint(0, 3))) for j in range(n)]
    rows = [Constraint(f"c{i}", {f"x{j}": float(rng.choice([1, 2])) for j in rng.sample(range(n), rng.choice([1, 2]))}, "<=", float(rng.randint(1, 6))) for i in range(2)]
    names = [v.name for v in variables]

    def term() -> tuple[tuple[str, str], float]:
        return quad_key(rng.choice(names), rng.choice(names)), float(rng.choice([1, 2, -1]))

    quad_obj = dict([term()]) if rng.random() < 0.7 else {}
    if rng.random() < 0.6:
        key, c = term()
        rows[rng.randrange(2)].quad[key] = c
    return Model(variables, rows, "min", 0.0, quad_obj)


def perturb_quadratic(m: Model, rng: random.Random) -> Model:
    m = copy.deepcopy(m)
    what = rng.choice(["obj_coef", "row_coef", "add_obj", "drop", "rhs", "linear"])
    names = [v.name for v in m.variables]
    if what == "obj_coef" and m.quad_obj:
        k = rng.choice(list(m.quad_obj))
        m.quad_obj[k] += rng.choice([1.0, 3.0])
    elif what == "row_coef" and any(c.quad for c in m.constraints):
        c = next(c for c in m.constraints if c.quad)
        k = rng.choice(list(c.quad))
        c.quad[k] *= rng.choice([2.0, -1.0])
    elif what == "add_obj":
        m.quad_obj[quad_key(rng.choice(names), rng.choice(names))] = 1.5
    elif what == "drop" and m.quad_obj:
        m.quad_obj.pop(rng.choice(list(m.quad_obj)))
    elif what == "rhs":
        m.constraints[0].rhs += 2.0
    else:
        m.variables[0].obj += 1.0
    return m


def test_rank_correlation_with_exact_graph_edit_distance_on_quadratic_pairs():
    """As for linear models (tests/test_evaluation_graph.py): Spearman between our distance and
    networkx's exact GED under the same edit costs (term nodes included), and zero exactly when
    GED is zero."""
    rng = random.Random(77)
    ours, exact = [], []
    costs = edit_costs()
    for _ in range(24):
        a = small_quadratic_model(rng)
        b = renamed_shuffled(perturb_quadratic(a, rng) if rng.random() < 0.8 else a, rng.randrange(1000), negate=False, scale=False, row_name="same")
        if rng.random() < 0.15:
            b = small_quadratic_model(rng)
        ga, gb = model_graph(a), model_graph(b)
        ged = nx.graph_edit_distance(ga, gb, **costs, timeout=20)
        exact.append(ged / (graph_size(ga) + graph_size(gb)))
        ours.append(graph_distance(a, b))
    assert sum(o == 0.0 for o in ours) == sum(e == 0.0 for e in exact)
    rho = spearmanr(ours, exact).statistic
    print(f"\nSpearman rho (ours vs exact normalized GED, 24 quadratic pairs): {rho:.3f}; "
          f"mean |ours - exact| = {sum(abs(o - e) for o, e in zip(ours, exact)) / len(ours):.4f}")
    assert rho >= 0.85


def test_mps_files_of_different_writers_are_the_same_graph(tmp_path):
    """gurobipy's and COPT's MPS files and CPLEX's manual form: distance 0 (their LP files write the
    objective constant as a fixed variable, so those differ by that variable)."""
    gurobi = read_model(written(write_gurobi, "mps", tmp_path))
    copt = read_model(written(write_copt, "mps", tmp_path))
    cplex = read_model(CPLEX_MPS)
    assert graph_distance(gurobi, copt) == 0.0 and graph_distance(gurobi, cplex) == 0.0
    assert equivalent(gurobi, copt) and equivalent(copt, cplex)


# ----------------------------------------------------------------------------- code answers

CODE = {
    "gurobipy": """
import gurobipy as gp
m = gp.Model()
x = m.addVar(lb=-5, ub=5, name="x")
y = m.addVar(lb=-5, ub=5, vtype=gp.GRB.INTEGER, name="y")
m.addConstr(x + y >= 1, name="l")
m.addQConstr(x * x + 2 * x * y + y * y <= 4, name="q")
m.setObjective(x * x - 3 * x * y + y + 2, gp.GRB.MINIMIZE)
m.optimize()
""",
    "coptpy": """
import coptpy as cp
env = cp.Envr()
m = env.createModel("t")
x = m.addVar(lb=-5, ub=5, name="x")
y = m.addVar(lb=-5, ub=5, vtype=cp.COPT.INTEGER, name="y")
m.addConstr(x + y >= 1, name="l")
m.addQConstr(x * x + 2 * x * y + y * y <= 4, name="q")
m.setObjective(x * x - 3 * x * y + y + 2, cp.COPT.MINIMIZE)
m.solve()
""",
    "pyomo": """
import pyomo.environ as pe
m = pe.ConcreteModel()
m.x = pe.Var(bounds=(-5, 5))
m.y = pe.Var(bounds=(-5, 5), domain=pe.Integers)
m.l = pe.Constraint(expr=m.x + m.y >= 1)
m.q = pe.Constraint(expr=(m.x + m.y) ** 2 <= 4)
m.o = pe.Objective(expr=m.x ** 2 - 3 * m.x * m.y + m.y + 2)
pe.SolverFactory("scip").solve(m)
""",
}


def _capture_in_child(conn, programs, workdir):
    from solver_ppo.evaluation.capture import run_captured

    conn.send([run_captured(code, workdir) for code in programs])
    conn.close()


def capture(programs: list[str], workdir) -> list:
    """Capture each program's model at its solve call, in a forked child (hooks stay out of this process)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_capture_in_child, args=(child, programs, str(workdir)))
    proc.start()
    child.close()
    outcomes = parent.recv()
    proc.join(60)
    return outcomes


def test_quadratic_code_models_are_read_and_solved(tmp_path):
    outcomes = capture(list(CODE.values()), tmp_path)
    models = {}
    for library, outcome in zip(CODE, outcomes):
        assert outcome.status == "captured", (library, outcome.reason)
        models[library] = m = read_model(outcome.model_text, outcome.fmt)
        assert m.is_quadratic and m.quad_obj == {("x", "x"): 1.0, ("x", "y"): -3.0}, library
        r = solve_model(m, SolverLimits())
        assert r.status == "optimal" and r.objective == pytest.approx(OPTIMUM, abs=1e-6), library
    assert graph_distance(models["gurobipy"], models["coptpy"]) == 0.0


def test_a_code_model_that_only_restates_a_number(tmp_path):
    from solver_ppo.evaluation.reward import restates_a_number

    code = "import gurobipy as gp\nm = gp.Model()\nx = m.addVar(ub=3, name='x')\nm.addConstr(x <= 2)\nm.setObjective(11, gp.GRB.MAXIMIZE)\nm.optimize()\n"
    (outcome,) = capture([code], tmp_path)
    m = read_model(outcome.model_text, outcome.fmt)
    assert m.objective_is_constant and solve_model(m, SolverLimits()).objective == pytest.approx(11.0)
    assert "only restates a number" in restates_a_number(m, None)
    assert restates_a_number(m, read_model("max 5\nst\n c: y <= 1\nend")) == ""  # the reference restates one too


def test_models_whose_rows_are_only_quadratic():
    """No linear coefficient anywhere: the distance still works term by term."""
    base = read_model("max [ 2 x * y ] / 2\nst\n e: [ x * y ] <= 4\n s: [ x ^ 2 ] <= 9\nend")
    assert graph_distance(base, renamed_shuffled(base, 3, row_name="same")) == 0.0 and equivalent(base, renamed_shuffled(base, 4, row_name="same"))
    other = copy.deepcopy(base)
    other.constraints[0].quad[("x", "y")] = 2.0
    assert 0.0 < graph_distance(base, other) < 1.0 and not equivalent(base, other)
