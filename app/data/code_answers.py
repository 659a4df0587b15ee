"""Reference answers as solver-library code, so SFT can teach the code answers the field writes.

`render_code` turns a linear model into an idiomatic program for one library: the data as dicts,
the variables over the index list, the objective and each group of constraints as a loop with
the library's sum (tupledict.prod, quicksum, lpSum, pyomo rules), then the library's solve call;
for scipy, the arrays of `linprog` filled by the same loops.
A model whose variables share one type and the default bounds (the synthetic families') gets
the short form; any other gets per-item `lower`, `upper` and `vtype` dicts. The numbers are
written exactly (integers without '.0', other floats as repr), so the captured model is the
model given: graph distance 0, same optimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from solver_ppo.evaluation.model import Model

CODE_FORMATS = ("pyscipopt", "gurobipy", "coptpy", "pyomo", "pulp", "scipy")
ANSWER_FORMATS = ("lp", *CODE_FORMATS)

_GROUPS = (("<=", "limits"), (">=", "requirements"), ("=", "exact"))
_OP = {"<=": "<=", ">=": ">=", "=": "=="}


@dataclass(frozen=True)
class _Library:
    """How one library spells what a program needs."""

    imports: list[str]
    vtypes: dict[str, str]  # 'C' | 'I' | 'B' -> the library's type
    infinity: tuple[str, str]  # how a missing lower and upper bound are written
    senses: dict[str, str]  # 'min' | 'max' -> the library's sense
    create: list[str]  # lines that make the model (`{name}`, `{sense}`)
    uniform_vars: str  # one type, default bounds (`{vtype}`)
    general_vars: str  # per-item lower, upper, vtype dicts
    objective: str  # `{weight}`, `{constant}`, `{sense}`
    row: str  # inside `for name, (coefs, rhs) in group.items():` (`{op}`)
    solve: list[str]


_LIBRARIES = {
    "gurobipy": _Library(
        ["import gurobipy as gp", "from gurobipy import GRB"],
        {"C": "GRB.CONTINUOUS", "I": "GRB.INTEGER", "B": "GRB.BINARY"}, ("-GRB.INFINITY", "GRB.INFINITY"),
        {"min": "GRB.MINIMIZE", "max": "GRB.MAXIMIZE"},
        ["m = gp.Model({name!r})"],
        'x = m.addVars(items, vtype={vtype}, name="x")',
        'x = m.addVars(items, lb=lower, ub=upper, vtype=vtype, name="x")',
        "m.setObjective(x.prod({weight}){constant}, {sense})",
        "m.addConstr(x.prod(coefs) {op} rhs, name=name)",
        ["m.optimize()", "", "if m.Status == GRB.OPTIMAL:", '    print("Optimal value:", m.ObjVal)']),
    "coptpy": _Library(
        ["import coptpy as cp", "from coptpy import COPT"],
        {"C": "COPT.CONTINUOUS", "I": "COPT.INTEGER", "B": "COPT.BINARY"}, ("-COPT.INFINITY", "COPT.INFINITY"),
        {"min": "COPT.MINIMIZE", "max": "COPT.MAXIMIZE"},
        ["env = cp.Envr()", "m = env.createModel({name!r})"],
        'x = m.addVars(items, vtype={vtype}, nameprefix="x")',
        "x = {{i: m.addVar(lb=lower[i], ub=upper[i], vtype=vtype[i], name=i) for i in items}}",
        "m.setObjective(cp.quicksum({weight}[i] * x[i] for i in items){constant}, {sense})",
        "m.addConstr(cp.quicksum(c * x[i] for i, c in coefs.items()) {op} rhs, name=name)",
        ["m.solve()", "", "if m.status == COPT.OPTIMAL:", '    print("Optimal value:", m.objval)']),
    "pyscipopt": _Library(
        ["from pyscipopt import Model, quicksum"],
        {"C": "'C'", "I": "'I'", "B": "'B'"}, ("None", "None"), {"min": "'minimize'", "max": "'maximize'"},
        ["m = Model({name!r})"],
        "x = {{i: m.addVar(name=i, vtype={vtype}) for i in items}}",
        "x = {{i: m.addVar(name=i, vtype=vtype[i], lb=lower[i], ub=upper[i]) for i in items}}",
        "m.setObjective(quicksum({weight}[i] * x[i] for i in items){constant}, {sense})",
        "m.addCons(quicksum(c * x[i] for i, c in coefs.items()) {op} rhs, name=name)",
        ["m.optimize()", "", 'if m.getStatus() == "optimal":', '    print("Optimal value:", m.getObjVal())']),
    "pulp": _Library(
        ["import pulp"],
        {"C": "'Continuous'", "I": "'Integer'", "B": "'Binary'"}, ("None", "None"),
        {"min": "pulp.LpMinimize", "max": "pulp.LpMaximize"},
        ["prob = pulp.LpProblem({name!r}, {sense})"],
        'x = pulp.LpVariable.dicts("x", items, lowBound=0, cat={vtype})',
        'x = {{i: pulp.LpVariable(f"x_{{i}}", lower[i], upper[i], cat=vtype[i]) for i in items}}',
        "prob += pulp.lpSum({weight}[i] * x[i] for i in items){constant}",
        "prob += pulp.lpSum(c * x[i] for i, c in coefs.items()) {op} rhs, name",
        ["prob.solve(pulp.PULP_CBC_CMD(msg=False))", "", 'print("Status:", pulp.LpStatus[prob.status])',
         'print("Optimal value:", pulp.value(prob.objective))']),
    "pyomo": _Library(
        ["import pyomo.environ as pyo"],
        {"C": "pyo.Reals", "I": "pyo.Integers", "B": "pyo.Binary"}, ("None", "None"),
        {"min": "pyo.minimize", "max": "pyo.maximize"},
        ["m = pyo.ConcreteModel({name!r})", "m.I = pyo.Set(initialize=items)",
         "m.unit_{weight} = pyo.Param(m.I, initialize={weight})"],
        "m.x = pyo.Var(m.I, domain={vtype})",
        "m.x = pyo.Var(m.I, domain=lambda m, i: vtype[i], bounds=lambda m, i: (lower[i], upper[i]))",
        "m.obj = pyo.Objective(expr=sum(m.unit_{weight}[i] * m.x[i] for i in m.I){constant}, sense={sense})",
        "",  # rule constraints, written by _rows
        ["", 'result = pyo.SolverFactory("glpk").solve(m)', 'print("Optimal value:", pyo.value(m.obj))']),
}
_PYOMO_UNIFORM = {"C": "pyo.NonNegativeReals", "I": "pyo.NonNegativeIntegers", "B": "pyo.Binary"}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def _dict(d: dict[str, str]) -> str:
    """A dict literal of already-written values."""
    return "{" + ", ".join(f"{k!r}: {v}" for k, v in d.items()) + "}"


def _numbers(d: dict[str, float]) -> str:
    return _dict({k: _num(v) for k, v in d.items()})


def _uniform(model: Model) -> str | None:
    """The one variable type when every variable has it with its default bounds, else None."""
    vtypes = {v.vtype for v in model.variables}
    if len(vtypes) != 1:
        return None
    vtype = vtypes.pop()
    default = (0.0, 1.0) if vtype == "B" else (0.0, math.inf)
    return vtype if all((v.lb, v.ub) == default for v in model.variables) else None


def _data(model: Model, infinity: tuple[str, str], vtypes: dict[str, str]) -> tuple[list[str], str, list, str | None]:
    """Python lines stating the model's data, the objective dict's name, the constraint groups
    present as (sense, group name), and the variables' one type (None: per-item dicts written)."""
    weight = "value" if model.sense == "max" else "cost"
    uniform = _uniform(model)
    data = [f"items = {[v.name for v in model.variables]!r}", f"{weight} = {_numbers({v.name: v.obj for v in model.variables})}"]
    if uniform is None:
        low, high = infinity
        data += [f"lower = {_dict({v.name: low if v.lb == -math.inf else _num(v.lb) for v in model.variables})}",
                 f"upper = {_dict({v.name: high if v.ub == math.inf else _num(v.ub) for v in model.variables})}",
                 f"vtype = {_dict({v.name: vtypes[v.vtype] for v in model.variables})}"]
    groups = []
    for op, group in _GROUPS:
        rows = [c for c in model.constraints if c.sense == op]
        if rows:
            groups.append((op, group))
            data.append(f"{group} = {{  # name: ({{item: coefficient}}, right-hand side), every row {op} its right-hand side")
            data += [f"    {c.name!r}: ({_numbers(c.coefs)}, {_num(c.rhs)})," for c in rows]
            data.append("}")
    return data, weight, groups, uniform


def _lines(model: Model, library: str, name: str) -> list[str]:
    lib = _LIBRARIES[library]
    data, weight, groups, uniform = _data(model, lib.infinity, lib.vtypes)
    c = model.obj_constant
    fill = {"name": name, "sense": lib.senses[model.sense], "weight": weight,
            "constant": "" if c == 0.0 else f" {'-' if c < 0 else '+'} {_num(abs(c))}"}
    if uniform is None:
        variables = lib.general_vars.format(**fill)
    else:
        vtype = _PYOMO_UNIFORM[uniform] if library == "pyomo" else lib.vtypes[uniform]
        variables = lib.uniform_vars.format(vtype=vtype, **fill)
    lines = [*lib.imports, "", *data, "", *(line.format(**fill) for line in lib.create), variables,
             lib.objective.format(**fill)]
    for op, group in groups:
        if library == "pyomo":
            lines += ["", f"def {group}_rule(m, name):", f"    coefs, rhs = {group}[name]",
                      f"    return sum(c * m.x[i] for i, c in coefs.items()) {_OP[op]} rhs", "",
                      f"m.{group} = pyo.Constraint(list({group}), rule={group}_rule)"]
        else:
            lines += [f"for name, (coefs, rhs) in {group}.items():", "    " + lib.row.format(op=_OP[op])]
    return lines + lib.solve


def _scipy_lines(model: Model) -> list[str]:
    """linprog over arrays built from the data dicts: scipy only minimizes (a maximization
    minimizes the negated objective and reports minus the minimum), a `>=` row is a `<=` row
    negated, and an objective constant is added to the reported value (the scored model has none)."""
    data, weight, groups, uniform = _data(model, ("None", "None"), {"C": "0", "I": "1", "B": "1"})
    sign = "-" if model.sense == "max" else ""
    lines = ["import numpy as np", "from scipy.optimize import linprog", "", *data, "",
             *(["# scipy minimizes: maximize by minimizing the negated objective"] if sign else []),
             f"c = np.array([{sign}{weight}[i] for i in items])"]
    rows = {"<=": ("A_ub", "b_ub"), ">=": ("A_ub", "b_ub"), "=": ("A_eq", "b_eq")}
    for matrix, rhs in dict.fromkeys(rows.values()):
        if any(rows[op] == (matrix, rhs) for op, _ in groups):
            lines.append(f"{matrix}, {rhs} = [], []")
    for op, group in groups:
        matrix, rhs = rows[op]
        negate = "-" if op == ">=" else ""
        lines += [f"for coefs, rhs in {group}.values():" + ("  # a >= row is a <= row negated" if negate else ""),
                  f"    {matrix}.append([{negate}coefs.get(i, 0) for i in items])", f"    {rhs}.append({negate}rhs)"]
    if uniform is None:
        bounds, integrality = "[(lower[i], upper[i]) for i in items]", "[vtype[i] for i in items]"
    else:
        bounds = f"[({0}, {1 if uniform == 'B' else None})] * len(items)"
        integrality = None if uniform == "C" else "[1] * len(items)"
    args = ["c"] + [f"{name}={name}" for op, _ in groups for name in rows[op]]
    args = list(dict.fromkeys(args)) + [f"bounds={bounds}"] + ([f"integrality={integrality}"] if integrality else [])
    c = model.obj_constant
    constant = "" if c == 0.0 else f" {'-' if c < 0 else '+'} {_num(abs(c))}"
    return lines + [f"res = linprog({', '.join(args)})", "", "if res.status == 0:",
                    f'    print("Optimal value:", {sign}res.fun{constant})']


def render_code(model: Model | str, library: str, name: str = "model") -> str:
    """The program that builds `model` (a linear Model or LP text) with `library` and solves it."""
    if library not in CODE_FORMATS:
        raise ValueError(f"unknown code format {library!r}; choose from {', '.join(CODE_FORMATS)}")
    if isinstance(model, str):
        from solver_ppo.evaluation.model import read_model  # the evaluation package loads numpy and networkx

        model = read_model(model)
    if getattr(model, "quad_obj", None) or any(getattr(c, "quad", None) for c in model.constraints):
        raise ValueError("render_code writes linear models; this one has quadratic terms")
    if not model.variables:
        raise ValueError("render_code needs a model with variables")
    if any(not math.isfinite(v.obj) for v in model.variables):
        raise ValueError("render_code needs finite objective coefficients")
    lines = _scipy_lines(model) if library == "scipy" else _lines(model, library, name)
    return "\n".join(lines) + "\n"


def code_answer(model: Model | str, library: str, name: str = "model") -> str:
    """The answer a code instruction asks for: the program in one ```python block."""
    return f"```python\n{render_code(model, library, name)}```"
