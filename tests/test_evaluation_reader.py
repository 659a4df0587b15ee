"""LP/MPS reading and writing: the forms people, LLMs and gurobipy write, and clear errors."""

import math
import subprocess
import sys

import pytest

from solver_ppo.evaluation import Constraint, Model, ModelReadError, Variable, extract_model, read_model, solve_model, to_lp_text
from solver_ppo.evaluation.config import SolverLimits

GUROBI_LP = r"""\ Model assignment
\ LP format - for model browsing. Use MPS format to capture full model detail.
Maximize
  3 assign[0,1] + 2 flow_a.b - 0.5 y + 7
Subject To
 cap[0]: assign[0,1] + flow_a.b <= 4
 R2: 2 assign[0,1] - y
   >= -3
 3 <= y + 2 z
 -assign[0,1] + z = 1
 range: -5 <= z - y <= 10
Bounds
 y free
 -inf <= z <= 8
 flow_a.b >= -5
 assign[0,1] <= 1e30
Generals
 z
Binaries
 b
End
"""


def test_gurobi_style_lp_with_bracket_names():
    m = read_model(GUROBI_LP)
    assert [v.name for v in m.variables] == ["assign[0,1]", "flow_a.b", "y", "z", "b"]
    assert m.sense == "max" and m.obj_constant == 7.0
    v = {x.name: x for x in m.variables}
    assert (v["assign[0,1]"].obj, v["flow_a.b"].obj, v["y"].obj) == (3.0, 2.0, -0.5)
    assert (v["y"].lb, v["y"].ub) == (-math.inf, math.inf)
    assert (v["z"].vtype, v["z"].lb, v["z"].ub) == ("I", -math.inf, 8.0)
    assert (v["flow_a.b"].lb, v["assign[0,1]"].ub) == (-5.0, math.inf)
    assert (v["b"].vtype, v["b"].lb, v["b"].ub) == ("B", 0.0, 1.0)
    c = {x.name: x for x in m.constraints}
    assert c["cap[0]"].coefs == {"assign[0,1]": 1.0, "flow_a.b": 1.0} and c["cap[0]"].rhs == 4.0
    assert c["R2"].coefs == {"assign[0,1]": 2.0, "y": -1.0} and (c["R2"].sense, c["R2"].rhs) == (">=", -3.0)
    assert c["R3"].coefs == {"y": 1.0, "z": 2.0} and (c["R3"].sense, c["R3"].rhs) == (">=", 3.0)
    assert c["R4"].coefs == {"assign[0,1]": -1.0, "z": 1.0} and (c["R4"].sense, c["R4"].rhs) == ("=", 1.0)
    assert (c["range_lo"].sense, c["range_lo"].rhs, c["range_hi"].rhs) == (">=", -5.0, 10.0)
    assert m.n_vars == 5 and m.n_cons == 6 and m.n_nonzeros == 12


@pytest.mark.parametrize(
    "text",
    [
        "max: 3x + 2y\ns.t.\nx + y <= 4\nx + 3y <= 6\nx <= 3\nend",
        "Maximize z = 3 x + 2 y\nSubject To\n c1: x + y <= 4\n c2: x + 3 y <= 6\n c3: x <= 3\nEnd",
        "MAXIMISE\n obj: 3*x + 2*y\nst\n x + y - 4 <= 0\n 6 >= x + 3 y\n x <= 3",
        "maximum\n 2 y + 3 x\nsuch that\n x + y =< 4\n x + 3 y <= 6\nbounds\n x <= 3\nEND",
    ],
)
def test_lp_dialects_agree(text):
    m = read_model(text)
    result = solve_model(m, SolverLimits())
    assert result.status == "optimal" and result.objective == pytest.approx(11.0)
    assert sorted(v.name for v in m.variables) == ["x", "y"]


def test_constants_on_both_sides_and_variables_on_the_right():
    m = read_model("min x\nst\n c: 2 x + 3 >= y - 1 + 4\n d: 5 = x + y\nend")
    c, d = m.constraints
    assert c.coefs == {"x": 2.0, "y": -1.0} and (c.sense, c.rhs) == (">=", 0.0)
    assert d.coefs == {"x": 1.0, "y": 1.0} and (d.sense, d.rhs) == ("=", 5.0)


def test_round_trip_through_lp_text():
    m = read_model(GUROBI_LP)
    assert read_model(to_lp_text(m)) == m
    built = Model(
        [Variable("a", "I", -2.0, 7.5, 1.25), Variable("b", "C", -math.inf, math.inf, 0.0), Variable("unused", "B", 0.0, 0.0, 0.0)],
        [Constraint("k", {"a": 1e-7, "b": -3.0}, "<=", 0.1), Constraint("e", {}, "=", 0.0)],
        "min",
        -4.5,
    )
    assert read_model(to_lp_text(built)) == built


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("max x\nst\n c1: x + y <= 4\n c2: x + * y <= 2\nend", 4, "unexpected '*'"),
        ("max x\nst\n c1: x + y <= 4\n c2: x + y <=\nend", 4, "without a right-hand side"),
        ("max x\nst\n c1: x + y 4\nend", 3, "without '<=', '>=' or '='"),
        ("max x\nst\n c1: x <= 4\nbounds\n x <= <= 3\nend", 5, "cannot read the bound"),
        ("max x^3 + y\nst\n x <= 4\nend", 1, "power 'x ^ 3' is not supported (only squares"),
        ("max x\nst\n c: x + [ x ^ 2 <= 4\nend", 3, "'[' without its closing ']'"),
        ("max x\nst\n c: x * y * z <= 4\nend", 3, "degree above 2"),
        ("this is not an lp\nst\nx<=1", 1, "Maximize"),
    ],
)
def test_syntax_errors_name_the_line(text, line, words):
    with pytest.raises(ModelReadError) as info:
        read_model(text, "lp")
    assert info.value.line == line
    assert f"line {line}:" in str(info.value) and words in str(info.value)


FIXED_MPS = """NAME          TESTLP
OBJSENSE
    MAX
ROWS
 N  COST
 L  LIM1
 G  LIM2
 E  MYEQN
COLUMNS
    MARKER                 'MARKER'                 'INTORG'
    X1        COST         1.0   LIM1         1.0
    X1        LIM2         1.0
    MARKER                 'MARKER'                 'INTEND'
    X2        COST         2.0   LIM1         1.0
    X2        MYEQN       -1.0
    X3        COST        -1.0   MYEQN        1.0
RHS
    RHS       COST        -3.5
    RHS       LIM1         4.0   LIM2         1.0
    RHS       MYEQN        7.0
RANGES
    RNG       LIM1         2.5
BOUNDS
 UP BND       X1           4.0
 MI BND       X2
 UP BND       X2           1.0
 FR BND       X3
ENDATA
"""


def test_fixed_mps_with_markers_ranges_bounds():
    m = read_model(FIXED_MPS)
    v = {x.name: x for x in m.variables}
    assert m.sense == "max" and m.obj_constant == 3.5
    assert (v["X1"].vtype, v["X1"].lb, v["X1"].ub, v["X1"].obj) == ("I", 0.0, 4.0, 1.0)
    assert (v["X2"].vtype, v["X2"].lb, v["X2"].ub) == ("C", -math.inf, 1.0)
    assert (v["X3"].lb, v["X3"].ub, v["X3"].obj) == (-math.inf, math.inf, -1.0)
    c = {x.name: x for x in m.constraints}
    assert (c["LIM1"].sense, c["LIM1"].rhs) == (">=", 1.5) and (c["LIM1_range"].sense, c["LIM1_range"].rhs) == ("<=", 4.0)
    assert c["MYEQN"].coefs == {"X2": -1.0, "X3": 1.0} and c["MYEQN"].rhs == 7.0
    # free MPS (no set names) reads to the same model
    free = "NAME t\nOBJSENSE MAX\nROWS\n N COST\n L LIM1\n G LIM2\n E MYEQN\nCOLUMNS\n MARKER 'MARKER' 'INTORG'\n X1 COST 1 LIM1 1\n X1 LIM2 1\n MARKER 'MARKER' 'INTEND'\n X2 COST 2 LIM1 1\n X2 MYEQN -1\n X3 COST -1 MYEQN 1\nRHS\n COST -3.5\n LIM1 4 LIM2 1\n MYEQN 7\nRANGES\n LIM1 2.5\nBOUNDS\n UP X1 4\n MI X2\n UP X2 1\n FR X3\nENDATA\n"
    assert read_model(free, "mps") == m


def test_mps_errors_name_the_line():
    with pytest.raises(ModelReadError) as info:
        read_model("NAME t\nROWS\n N obj\nCOLUMNS\n x obj abc\nENDATA\n")
    assert info.value.line == 5 and "'abc' is not a number" in str(info.value)
    with pytest.raises(ModelReadError, match="unknown row 'nope'"):
        read_model("NAME t\nROWS\n N obj\nCOLUMNS\n x nope 1\nENDATA\n")


def test_extraction_forms():
    lp = "max x\nst\n x <= 1\nend"
    assert extract_model(f"Model:\n```lp\n{lp}\n```\nThe final answer is 1.").status == "found"
    assert extract_model(f"<model>\n{lp}\n</model>").text == lp
    assert extract_model(f"<model>\n```lp\n{lp}\n```\n</model>").candidates == 1  # tag around a fence: one model
    assert extract_model(lp).fmt == "lp"
    mps = extract_model(f"```mps\n{FIXED_MPS}```")
    assert mps.status == "found" and mps.fmt == "mps"
    two = extract_model(f"```lp\n{lp}\n```\nor\n```lp\nmin x\nst\n x >= 1\nend\n```")
    assert (two.status, two.candidates) == ("several", 2)
    same_twice = extract_model(f"```lp\n{lp}\n```\nagain:\n```lp\n{lp}\n```")
    assert same_twice.status == "found"
    none = extract_model("I think the optimal value is 1,234.5 dollars.")
    assert (none.status, none.final_answer) == ("none", 1234.5)
    assert extract_model("```python\nprint('max x')\n```").status == "none"
    assert extract_model(r"so \boxed{42}" + f"\n```lp\n{lp}\n```").final_answer == 42.0


def test_importing_the_package_does_not_load_torch_or_lightning():
    code = "import sys, solver_ppo.evaluation, solver_ppo.evaluation.pool; bad = [m for m in ('torch', 'lightning') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert out.returncode == 0, out.stdout + out.stderr


# ----------------------------------------------------------------------------- repeated names

REPEATED_LP = """\\ written by gurobipy: two constraints the code named alike
Maximize
 3 x + 2 y
Subject To
 availability_0_0: x + y <= 4
 availability_0_0: x + 3 y <= 6
 R2: x <= 3
 R2: -5 <= y - x <= 10
End
"""


def test_repeated_row_names_are_labels():
    m = read_model(REPEATED_LP)
    assert [c.name for c in m.constraints] == ["availability_0_0", "availability_0_0", "R2", "R2_lo", "R2_hi"]
    assert [c.coefs for c in m.constraints[:2]] == [{"x": 1.0, "y": 1.0}, {"x": 1.0, "y": 3.0}]
    r = solve_model(m, SolverLimits())
    assert (r.status, r.objective) == ("optimal", pytest.approx(11.0))
    renamed = read_model(REPEATED_LP.replace("availability_0_0: x + 3", "other: x + 3"))
    from solver_ppo.evaluation import graph_distance

    assert graph_distance(m, renamed) == 0.0  # names are not part of the model


def test_gurobipy_writes_repeated_names_and_we_read_them(tmp_path):
    import gurobipy as gp

    with gp.Env(params={"OutputFlag": 0}) as env, gp.Model("t", env=env) as g:
        x = g.addVars(2, name="x")
        for k in range(2):
            g.addConstr(x[0] + (k + 1) * x[1] <= 4 + 2 * k, name="availability_0_0")
        g.setObjective(3 * x[0] + 2 * x[1], gp.GRB.MAXIMIZE)
        g.write(str(tmp_path / "m.lp"))
        g.write(str(tmp_path / "m.mps"))
    lp_text = (tmp_path / "m.lp").read_text()
    assert lp_text.count("availability_0_0:") == 2
    lp, mps = read_model(lp_text), read_model((tmp_path / "m.mps").read_text())  # Gurobi's MPS writer renames them
    for m in (lp, mps):
        assert m.n_cons == 2 and solve_model(m, SolverLimits()).objective == pytest.approx(12.0)


def test_repeated_row_name_in_mps_is_refused_with_name_and_line():
    text = "NAME t\nROWS\n N obj\n L c\n L c\nCOLUMNS\n x obj 1 c 1\nRHS\n rhs c 4\nENDATA\n"
    with pytest.raises(ModelReadError) as info:
        read_model(text)
    assert info.value.line == 5 and "row name 'c' is used twice in ROWS (first on line 4)" in str(info.value)


# ----------------------------------------------------------------------------- constructs


def test_lp_constructs_every_solver_reads():
    text = """\\ comments, `=>`/`=<`, infinity spellings, lazy constraints and user cuts, a line continued
Maximize
 profit: 3 x + 2 y
   + 0 z - 1.5
Subject To
 c1: x + y =< 4
 c2: - x - 3 y => -6
Lazy Constraints
 lazy1: x <= 3
User Cuts
 cut1: x + y <= 4
Bounds
 -infinity <= z <= +inf
 y >= -Inf
 y <= 1e30
Generals
 z
End
"""
    m = read_model(text)
    assert [c.name for c in m.constraints] == ["c1", "c2", "lazy1", "cut1"]
    v = {x.name: x for x in m.variables}
    assert (v["z"].lb, v["z"].ub, v["y"].lb, v["y"].ub) == (-math.inf, math.inf, -math.inf, math.inf)
    assert m.obj_constant == -1.5 and m.constraints[1].sense == ">="
    assert solve_model(m, SolverLimits()).objective == pytest.approx(11.0 - 1.5)


@pytest.mark.parametrize(
    "text, line, construct",
    [
        ("max x\nst\n c: b = 1 -> x + y <= 3\nend", 3, "indicator constraints ('->')"),
        ("max x\nst\n c: x <= 3\nGeneral Constraints\n g: x = MAX ( y , 2 )\nend", 4, "general constraints (section 'General Constraints'"),
        ("max x\nst\n c: x + y <= 3\nSOS\n s1: S1 :: x:1 y:2\nend", 4, "special ordered sets (section 'SOS')"),
        ("max x\nst\n c: x <= 3\nPWLObj\n x: (0, 0) (1, 2)\nend", 4, "piecewise-linear objective"),
        ("Maximize multi-objectives\n o1: Priority=1 Weight=1 AbsTol=0 RelTol=0\n x\nst\n c: x <= 3\nend", 1, "multiple objectives"),
    ],
)
def test_refused_lp_constructs_are_named_with_their_line(text, line, construct):
    with pytest.raises(ModelReadError) as info:
        read_model(text, "lp")
    assert info.value.line == line and construct in str(info.value) and "not supported" in str(info.value)


MPS_HEAD = "NAME t\nROWS\n N obj\n L c\nCOLUMNS\n x obj 1 c 1\n y obj 1 c 1\nRHS\n rhs c 4\n"


@pytest.mark.parametrize(
    "tail, line, construct",
    [
        ("SOS\n S1 SOS s1 9\n x 1\n y 2\nENDATA\n", 10, "special ordered sets (section SOS)"),
        ("INDICATORS\n IF c x 1\nENDATA\n", 10, "indicator constraints (section INDICATORS)"),
        ("GENCONS\nENDATA\n", 10, "general constraints (section GENCONS)"),
        ("PWLOBJ\nENDATA\n", 10, "piecewise-linear objective"),
        ("QCMATRIX obj\n x x 1\nENDATA\n", 10, "QCMATRIX for the objective row"),
        ("QUADOBJ\n x w 1\nENDATA\n", 11, "QUADOBJ uses column 'w', which COLUMNS does not define"),
    ],
)
def test_refused_mps_constructs_are_named_with_their_line(tail, line, construct):
    with pytest.raises(ModelReadError) as info:
        read_model(MPS_HEAD + tail, "mps")
    assert info.value.line == line and construct in str(info.value)


SEMI_LP = "Minimize\n 3 x + 4 y\nSubject To\n c1: x + y >= 1\nBounds\n 2 <= x <= 5\n y <= 1\nSemi-continuous\n x\nEnd\n"


@pytest.mark.parametrize(
    "text, optimum",
    [
        # x is 0 or in [2, 5]: x = 0, y = 1 costs 4; x = 2 costs 6 (a continuous x in [0, 5] would give 3)
        (SEMI_LP, 4.0),
        (SEMI_LP.replace("2 <= x <= 5", "x >= 2"), 4.0),  # no upper bound
        (SEMI_LP.replace("y <= 1", "y <= 0.2"), 6.0),  # y cannot cover the row alone: x switches on at 2
        (SEMI_LP.replace("Semi-continuous\n x\n", ""), 6.0),  # without the section x stays in [2, 5]
        # MPS: SC bound (upper bound 5) with a LO bound of 2, in Gurobi's and CPLEX's form
        ("NAME t\nROWS\n N obj\n G c1\nCOLUMNS\n x obj 3 c1 1\n y obj 4 c1 1\nRHS\n rhs c1 1\nBOUNDS\n UP bnd y 1\n LO bnd x 2\n SC bnd x 5\nENDATA\n", 4.0),
        ("NAME t\nROWS\n N obj\n G c1\nCOLUMNS\n x obj 3 c1 1\n y obj 4 c1 1\nRHS\n rhs c1 1\nBOUNDS\n UP bnd y 0.2\n LO bnd x 2\n SC bnd x\nENDATA\n", 6.0),
    ],
)
def test_semi_continuous_variables(text, optimum):
    m = read_model(text)
    assert m.variables[0].semi is ("Semi-continuous" in text or " SC " in text)
    r = solve_model(m, SolverLimits())
    assert r.status == "optimal" and r.objective == pytest.approx(optimum) and set(r.values) == {"x", "y"}
    if "Minimize" in text:
        assert read_model(to_lp_text(m)) == m
