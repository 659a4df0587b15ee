"""Reference answers as solver-library code, so SFT can teach the code answers the field writes.

`render_code` turns a model (as the synthetic families build it: one variable type, bounds
0..inf or binary) into an idiomatic program for one library: the data as dicts, the variables
over the index list, the objective and each group of constraints as a loop with the library's
sum (quicksum, lpSum, tupledict.prod, pyomo rules), then the library's solve call. The numbers
are written exactly (integers without '.0', other floats as repr), so the captured model is the
reference model: graph distance 0, same optimum.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.evaluation.model import Model

INF = math.inf

CODE_FORMATS = ("pyscipopt", "gurobipy", "coptpy", "pyomo", "pulp")
ANSWER_FORMATS = ("lp", *CODE_FORMATS)

_GROUPS = (("<=", "limits"), (">=", "requirements"), ("=", "exact"))
_SENSE_WORD = {"<=": "<=", ">=": ">=", "=": "=="}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def _dict(d: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k!r}: {_num(v)}" for k, v in d.items()) + "}"


def _data(model: Model) -> tuple[list[str], str, list[tuple[str, str]]]:
    """Python lines stating the data; the objective dict's name; (sense, group name) of the
    constraint groups present."""
    vtypes = {v.vtype for v in model.variables}
    if len(vtypes) != 1:
        raise ValueError(f"render_code needs one variable type, got {sorted(vtypes)}")
    for v in model.variables:
        if (v.lb, v.ub) != ((0.0, 1.0) if v.vtype == "B" else (0.0, INF)):
            raise ValueError(f"render_code writes variables with bounds 0..inf or binaries; {v.name!r} has [{v.lb}, {v.ub}]")
    weight = "value" if model.sense == "max" else "cost"
    lines = [f"items = {[v.name for v in model.variables]!r}",
             f"{weight} = {_dict({v.name: v.obj for v in model.variables})}"]
    groups = []
    for sense, group in _GROUPS:
        rows = [c for c in model.constraints if c.sense == sense]
        if rows:
            groups.append((sense, group))
            lines.append(f"{group} = {{  # name: ({{item: coefficient}}, right-hand side), every row {sense} its right-hand side")
            lines += [f"    {c.name!r}: ({_dict(c.coefs)}, {_num(c.rhs)})," for c in rows]
            lines.append("}")
    return lines, weight, groups


def _constant(model: Model) -> str:
    c = model.obj_constant
    return "" if c == 0.0 else f" {'-' if c < 0 else '+'} {_num(abs(c))}"


def _gurobipy(model: Model, name: str) -> list[str]:
    data, weight, groups = _data(model)
    vtype = {"C": "GRB.CONTINUOUS", "I": "GRB.INTEGER", "B": "GRB.BINARY"}[model.variables[0].vtype]
    sense = "GRB.MAXIMIZE" if model.sense == "max" else "GRB.MINIMIZE"
    lines = ["import gurobipy as gp", "from gurobipy import GRB", "", *data, "",
             f"m = gp.Model({name!r})", f"x = m.addVars(items, vtype={vtype}, name=\"x\")",
             f"m.setObjective(x.prod({weight}){_constant(model)}, {sense})"]
    for op, group in groups:
        lines += [f"for name, (coefs, rhs) in {group}.items():",
                  f"    m.addConstr(x.prod(coefs) {_SENSE_WORD[op]} rhs, name=name)"]
    return lines + ["m.optimize()", "", "if m.Status == GRB.OPTIMAL:", "    print(\"Optimal value:\", m.ObjVal)"]


def _coptpy(model: Model, name: str) -> list[str]:
    data, weight, groups = _data(model)
    vtype = {"C": "COPT.CONTINUOUS", "I": "COPT.INTEGER", "B": "COPT.BINARY"}[model.variables[0].vtype]
    sense = "COPT.MAXIMIZE" if model.sense == "max" else "COPT.MINIMIZE"
    lines = ["import coptpy as cp", "from coptpy import COPT", "", *data, "",
             "env = cp.Envr()", f"m = env.createModel({name!r})", f"x = m.addVars(items, vtype={vtype}, nameprefix=\"x\")",
             f"m.setObjective(cp.quicksum({weight}[i] * x[i] for i in items){_constant(model)}, {sense})"]
    for op, group in groups:
        lines += [f"for name, (coefs, rhs) in {group}.items():",
                  f"    m.addConstr(cp.quicksum(c * x[i] for i, c in coefs.items()) {_SENSE_WORD[op]} rhs, name=name)"]
    return lines + ["m.solve()", "", "if m.status == COPT.OPTIMAL:", "    print(\"Optimal value:\", m.objval)"]


def _pyscipopt(model: Model, name: str) -> list[str]:
    data, weight, groups = _data(model)
    vtype = model.variables[0].vtype
    sense = "maximize" if model.sense == "max" else "minimize"
    lines = ["from pyscipopt import Model, quicksum", "", *data, "",
             f"m = Model({name!r})", f"x = {{i: m.addVar(name=i, vtype={vtype!r}) for i in items}}",
             f"m.setObjective(quicksum({weight}[i] * x[i] for i in items){_constant(model)}, {sense!r})"]
    for op, group in groups:
        lines += [f"for name, (coefs, rhs) in {group}.items():",
                  f"    m.addCons(quicksum(c * x[i] for i, c in coefs.items()) {_SENSE_WORD[op]} rhs, name=name)"]
    return lines + ["m.optimize()", "", "if m.getStatus() == \"optimal\":", "    print(\"Optimal value:\", m.getObjVal())"]


def _pulp(model: Model, name: str) -> list[str]:
    data, weight, groups = _data(model)
    cat = {"C": "Continuous", "I": "Integer", "B": "Binary"}[model.variables[0].vtype]
    sense = "pulp.LpMaximize" if model.sense == "max" else "pulp.LpMinimize"
    lines = ["import pulp", "", *data, "",
             f"prob = pulp.LpProblem({name!r}, {sense})",
             f"x = pulp.LpVariable.dicts(\"x\", items, lowBound=0, cat={cat!r})",
             f"prob += pulp.lpSum({weight}[i] * x[i] for i in items){_constant(model)}"]
    for op, group in groups:
        lines += [f"for name, (coefs, rhs) in {group}.items():",
                  f"    prob += pulp.lpSum(c * x[i] for i, c in coefs.items()) {_SENSE_WORD[op]} rhs, name"]
    return lines + ["prob.solve(pulp.PULP_CBC_CMD(msg=False))", "",
                    "print(\"Status:\", pulp.LpStatus[prob.status])", "print(\"Optimal value:\", pulp.value(prob.objective))"]


def _pyomo(model: Model, name: str) -> list[str]:
    data, weight, groups = _data(model)
    domain = {"C": "pyo.NonNegativeReals", "I": "pyo.NonNegativeIntegers", "B": "pyo.Binary"}[model.variables[0].vtype]
    sense = "pyo.maximize" if model.sense == "max" else "pyo.minimize"
    lines = ["import pyomo.environ as pyo", "", *data, "",
             f"m = pyo.ConcreteModel({name!r})", "m.I = pyo.Set(initialize=items)",
             f"m.unit_{weight} = pyo.Param(m.I, initialize={weight})", f"m.x = pyo.Var(m.I, domain={domain})",
             f"m.obj = pyo.Objective(expr=sum(m.unit_{weight}[i] * m.x[i] for i in m.I){_constant(model)}, sense={sense})"]
    for op, group in groups:
        lines += ["", f"def {group}_rule(m, name):", f"    coefs, rhs = {group}[name]",
                  f"    return sum(c * m.x[i] for i, c in coefs.items()) {_SENSE_WORD[op]} rhs", "",
                  f"m.{group} = pyo.Constraint(list({group}), rule={group}_rule)"]
    return lines + ["", "result = pyo.SolverFactory(\"glpk\").solve(m)",
                    "print(\"Optimal value:\", pyo.value(m.obj))"]


_RENDER = {"gurobipy": _gurobipy, "coptpy": _coptpy, "pyscipopt": _pyscipopt, "pulp": _pulp, "pyomo": _pyomo}


def render_code(model: Model | str, library: str, name: str = "model") -> str:
    """The program that builds `model` (a Model or LP text) with `library` and solves it."""
    if library not in _RENDER:
        raise ValueError(f"unknown code format {library!r}; choose from {', '.join(CODE_FORMATS)}")
    if isinstance(model, str):
        from app.evaluation.model import read_model  # the evaluation package loads numpy and networkx

        model = read_model(model)
    if any(not math.isfinite(v.obj) for v in model.variables):
        raise ValueError("render_code needs finite objective coefficients")
    return "\n".join(_RENDER[library](model, name)) + "\n"


def code_answer(model: Model | str, library: str, name: str = "model") -> str:
    """The answer a code instruction asks for: the program in one ```python block."""
    return f"```python\n{render_code(model, library, name)}```"
