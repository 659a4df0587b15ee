"""Solve a Model with SCIP (pyscipopt), in-process, under the configured limits.

This is the only module that imports pyscipopt. The model is built through the API rather than
through SCIP's LP reader, so names such as `x[0,1]` need no escaping, and repeated constraint
names are fine (SCIP does not require them to be unique). Quadratic rows and objectives go to
SCIP's nonlinear constraints: SCIP solves them convex or not, with integers, to global optimality.
A semi-continuous variable gets a binary switch and indicator rows.

Creating a SCIP instance includes all of SCIP's default plugins (~5 ms, more than solving a small
model takes), so each thread keeps one instance and reuses it: `freeProb` + `createProbBasic`
clear the problem, and every parameter we change is set again on every solve. pyscipopt keeps a
Python wrapper per variable and constraint ever created on an instance (freeProb does not drop
them), so the instance is replaced after `_RECYCLE_OBJECTS` of them, and after any SCIP error.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field, replace

from solver_ppo.evaluation.config import EvaluationConfig, SolverLimits
from solver_ppo.evaluation.model import INF, Model, Variable, row_names

_ROW, _SEMI = "row:", "semi:"  # SCIP names of a model's row i and of a semi-continuous variable's rows
# nodelimit: only the feedback searches set a node limit (solve_model never does)
STATUSES = ("optimal", "infeasible", "unbounded", "inf_or_unbd", "timelimit", "nodelimit", "error", "rejected")


@dataclass
class SolveResult:
    status: str  # one of STATUSES
    objective: float | None = None  # optimum (optimal) or best found (timelimit), objective constant included
    values: dict[str, float] = field(default_factory=dict)  # primal values of the solution above
    solve_seconds: float = 0.0  # SCIP's own solving time
    reason: str = ""
    n_vars: int = 0
    n_cons: int = 0
    ray: dict[str, float] = field(default_factory=dict)  # unbounded: SCIP's primal ray, nonzero entries, where it kept one
    nodes: int = 0  # branch-and-bound nodes SCIP processed (a deterministic measure of its work)


class SearchTimeLimit(Exception):
    """A feedback search stopped by its wall-clock safety rather than its work limit: what it
    would have found depends on the machine's load, so the caller reports the stop as such."""


def size_problem(model: Model, limits: SolverLimits) -> str | None:
    """Why the model is over the size limits, or None."""
    for what, n, cap in (
        ("variables", model.n_vars, limits.max_vars),
        ("constraints", model.n_cons, limits.max_cons),
        ("nonzeros", model.n_nonzeros, limits.max_nonzeros),
    ):
        if n > cap:
            return f"model has {n} {what}, over the limit of {cap}"
    return None


def solve_model(model: Model, limits: SolverLimits) -> SolveResult:
    """Never raises: SCIP errors come back as status 'error' with the message as the reason."""
    n_vars, n_cons = model.n_vars, model.n_cons
    too_big = size_problem(model, limits)
    if too_big:
        return SolveResult("rejected", reason=too_big, n_vars=n_vars, n_cons=n_cons)
    try:
        result = _solve(model, limits, limits.time_limit_s)
        if result.status == "inf_or_unbd":
            result = _resolve_inf_or_unbd(model, limits, result)
    except Exception as err:  # SCIP raises plain Exceptions on bad data
        reset_scip()  # the instance may be left mid-stage; never reuse it
        result = SolveResult("error", reason=f"SCIP failed: {type(err).__name__}: {err}")
    result.n_vars, result.n_cons = n_vars, n_cons
    return result


_RECYCLE_OBJECTS = 200_000  # variables + constraints created on one instance before it is replaced
_local = threading.local()  # .scip: this thread's SCIP instance, .objects: wrappers created on it


def reset_scip() -> None:
    """Drop this thread's SCIP instance; the next solve creates a fresh one."""
    _local.scip = None
    _local.objects = 0


def _blank_scip(n_objects: int):
    """This thread's SCIP instance holding an empty problem (a fresh instance when due)."""
    from pyscipopt import Model as ScipModel

    scip = getattr(_local, "scip", None)
    if scip is None or _local.objects + n_objects > _RECYCLE_OBJECTS:
        scip = ScipModel()
        scip.hideOutput()
        scip.setParam("parallel/maxnthreads", 1)
        _local.scip, _local.objects = scip, 0
    else:
        scip.freeProb()
        scip.createProbBasic("model")
    _local.objects += n_objects
    return scip


def _build(model: Model, with_objective: bool):
    """The model on this thread's SCIP instance; returns (scip, {name: SCIP variable}).

    SCIP's objective is linear, so a quadratic objective q(x) becomes an auxiliary free variable t
    with objective 1 and the row q(x) - t <= 0 (minimize) or >= 0 (maximize): at the optimum t = q(x).
    """
    from pyscipopt import quicksum

    quad_obj = with_objective and bool(model.quad_obj)
    semi = {v.name: _semi_rows(v) for v in model.variables if v.semi}
    scip = _blank_scip(model.n_vars + model.n_cons + 2 * quad_obj + sum(1 + len(rows) for rows in semi.values()))
    svars = {}
    for v in model.variables:
        lo, hi = (min(v.lb, 0.0), max(v.ub, 0.0)) if v.semi else (v.lb, v.ub)
        lb = None if lo == float("-inf") else lo
        ub = None if hi == float("inf") else hi
        svars[v.name] = scip.addVar(name=v.name, vtype=v.vtype, lb=lb, ub=ub, obj=v.obj if with_objective else 0.0)
    for name, rows in semi.items():  # x = 0 when the switch is off, lb <= x <= ub when it is on
        x, on = svars[name], scip.addVar(name=f"{name}_on", vtype="B")
        for active, sense, bound in rows:
            scip.addConsIndicator(x <= bound if sense == "<=" else -x <= -bound, binvar=on, activeone=active, name=f"{_SEMI}{name}")
    for i, c in enumerate(model.constraints):  # named by position: the model's names may repeat
        expr = quicksum(coef * svars[name] for name, coef in c.coefs.items())
        if c.quad:
            expr += quicksum(coef * svars[a] * svars[b] for (a, b), coef in c.quad.items())
        if c.sense == "<=":
            scip.addCons(expr <= c.rhs, name=f"{_ROW}{i}")
        elif c.sense == ">=":
            scip.addCons(expr >= c.rhs, name=f"{_ROW}{i}")
        else:
            scip.addCons(expr == c.rhs, name=f"{_ROW}{i}")
    if quad_obj:
        t = scip.addVar(name="quadratic_objective", vtype="C", lb=None, ub=None, obj=1.0)
        q = quicksum(coef * svars[a] * svars[b] for (a, b), coef in model.quad_obj.items())
        scip.addCons(q - t <= 0 if model.sense == "min" else q - t >= 0, name="quadratic_objective")
    if model.sense == "max":
        scip.setMaximize()
    else:
        scip.setMinimize()
    return scip, svars


def _semi_rows(v: Variable) -> list[tuple[bool, str, float]]:
    """A semi-continuous variable's indicator rows (switch on?, sense, bound) beyond its SCIP bounds
    [min(lb, 0), max(ub, 0)]: off forces x = 0, on forces lb <= x <= ub."""
    rows = []
    if v.ub > 0.0:
        rows.append((False, "<=", 0.0))
    if v.lb < 0.0:
        rows.append((False, ">=", 0.0))
    if v.lb > 0.0:
        rows.append((True, ">=", v.lb))
    if v.ub < 0.0:
        rows.append((True, "<=", v.ub))
    return rows


def _solve(model: Model, limits: SolverLimits, time_limit: float, with_objective: bool = True, presolve: bool = True,
           nodes: int = -1) -> SolveResult:
    scip, svars = _build(model, with_objective)
    scip.setParam("limits/time", max(time_limit, 0.01))  # set on every solve: the instance is reused
    _limit_nodes(scip, nodes)
    scip.setParam("limits/memory", float(limits.memory_limit_mb))
    scip.setParam("presolving/maxrounds", -1 if presolve else 0)
    scip.optimize()
    status = scip.getStatus()
    seconds = scip.getSolvingTime()
    mapped = {"optimal": "optimal", "infeasible": "infeasible", "unbounded": "unbounded", "inforunbd": "inf_or_unbd",
              "timelimit": "timelimit", "totalnodelimit": "nodelimit"}
    result = SolveResult(mapped.get(status, "error"), solve_seconds=seconds, nodes=scip.getNTotalNodes())
    if status in ("optimal", "timelimit", "unbounded") and scip.getNSols() > 0:
        sol = scip.getBestSol()
        if status != "unbounded":
            result.objective = scip.getSolObjVal(sol) + model.obj_constant
        result.values = {name: scip.getSolVal(sol, var) for name, var in svars.items()}
    if status == "unbounded" and scip.hasPrimalRay():
        result.ray = {name: ray for name, var in svars.items() if abs(ray := scip.getPrimalRayVal(var)) > 1e-9}
    result.reason = {
        "optimal": "",
        "infeasible": "SCIP proved the model infeasible",
        "unbounded": "SCIP proved the model unbounded",
        "inforunbd": "SCIP proved the model infeasible or unbounded",
        "timelimit": f"SCIP hit the time limit of {time_limit:g} s before proving optimality",
        "totalnodelimit": f"SCIP hit the node limit of {nodes} before proving optimality",
    }.get(status, f"SCIP stopped with status '{status}'")
    return result


def _limit_nodes(scip, nodes: int) -> None:
    """Stop after `nodes` branch-and-bound nodes (-1: no limit, SCIP's defaults). Under a limit,
    rapid learning is off: its sub-SCIP's nodes are not counted against the limit, and on models
    whose bounds the subset search dropped it took 92 of a solve's 93 s."""
    scip.setParam("limits/totalnodes", nodes)
    if nodes < 0:
        scip.resetParam("separating/rapidlearning/freq")
    else:
        scip.setParam("separating/rapidlearning/freq", -1)


def _resolve_inf_or_unbd(model: Model, limits: SolverLimits, first: SolveResult) -> SolveResult:
    """Tell infeasible from unbounded: the same constraints with a zero objective are feasible iff unbounded."""
    left = limits.time_limit_s - first.solve_seconds
    if left <= 0:
        return first
    check = _solve(model, limits, left, with_objective=False)
    seconds = first.solve_seconds + check.solve_seconds
    if check.status == "optimal":
        return SolveResult("unbounded", solve_seconds=seconds, reason="SCIP proved the model unbounded (feasible, objective unbounded)")
    if check.status == "infeasible":
        return SolveResult("infeasible", solve_seconds=seconds, reason="SCIP proved the model infeasible")
    return first


# ----------------------------------------------------------------------------- what feedback shows


def growing_variable(model: Model, result: SolveResult, limits: SolverLimits, seconds: float,
                     nodes: int = EvaluationConfig.feedback_nodes) -> tuple[str, int] | None:
    """(name, +1 or -1): a variable that grows or falls without end in an unbounded model, the
    largest entry of SCIP's primal ray (ties: one in the objective, then the first). When presolving
    proved it unbounded no ray is kept; a solve without presolving, on a fresh SCIP instance, within
    `nodes` branch-and-bound nodes finds one from the LP. None when none is found within them;
    raises SearchTimeLimit when `seconds` (the wall-clock safety) ran out first."""
    ray = result.ray
    if not ray:
        reset_scip()  # a fresh instance: the same ray whatever this thread solved before
        try:
            again = _solve(model, limits, seconds, presolve=False, nodes=nodes)
        except Exception:
            reset_scip()
            return None
        if again.status == "timelimit":
            raise SearchTimeLimit(f"the search for an unbounded ray hit its time limit of {seconds:g} s")
        ray = again.ray
    if not ray:
        return None
    in_objective = {v.name for v in model.variables if v.obj != 0.0} | {n for key in model.quad_obj for n in key}
    order = {name: i for i, name in enumerate(ray)}
    name = max(ray, key=lambda n: (abs(ray[n]), n in in_objective, -order[n]))
    return name, 1 if ray[name] > 0 else -1


def infeasible_subset(model: Model, limits: SolverLimits, seconds: float,
                      nodes: int = EvaluationConfig.feedback_nodes) -> list[str] | None:
    """An irreducible infeasible subset of an infeasible model's constraints and bounds, named as its
    text names them (model.row_names; bounds as `x >= 0`), or None when none is found within `nodes`
    branch-and-bound nodes in all. The node count, not the clock, bounds the search, so the same
    model gets the same answer on an idle machine and a busy one; `seconds` is only the wall-clock
    safety, and running out of it raises SearchTimeLimit.

    SCIP's IIS finder reduces the constraints with every bound kept (with `iis/removebounds` it also
    drops bounds, but then returns wrong subsets: 2x - 2y = 1 over integers loses its only row);
    the bounds of the variables in those rows are then dropped one at a time while the rows and the
    bounds left stay infeasible (each drop a small solve, its nodes counted against the same `nodes`)."""
    deadline = time.monotonic() + seconds
    reset_scip()  # a fresh instance: on a reused one SCIP's IIS search picks different subsets from run to run
    try:
        scip, _ = _build(model, with_objective=False)
        scip.setParam("limits/time", max(seconds, 0.01))
        scip.setParam("limits/memory", float(limits.memory_limit_mb))
        scip.setParam("iis/time", max(seconds, 0.01))
        scip.setParam("iis/nodes", nodes)
        _limit_nodes(scip, nodes)
        scip.setParam("iis/removebounds", False)
        iis = scip.generateIIS()
        found = iis.isSubscipInfeasible() and iis.isSubscipIrreducible()
        names = [c.name for c in iis.getSubscip().getConss(transformed=False)] if found else []
        nodes_left = nodes - iis.getNNodes()
    except Exception:
        reset_scip()
        found = False
    if not found:
        if time.monotonic() >= deadline:
            raise SearchTimeLimit(f"the infeasible-subset search hit its time limit of {seconds:g} s")
        return None
    rows = sorted(int(n[len(_ROW):]) for n in names if n.startswith(_ROW))
    semi = sorted({n[len(_SEMI):] for n in names if n.startswith(_SEMI)})
    try:
        bounds = _needed_bounds(model, rows, semi, limits, deadline, nodes_left)
    except SearchTimeLimit:
        raise
    except Exception:
        reset_scip()
        return None
    if bounds is None:
        return None
    shown = row_names(model)
    return [shown[i] for i in rows] + [f"{name} semi-continuous" for name in semi] + bounds


def _needed_bounds(model: Model, rows: list[int], semi: list[str], limits: SolverLimits, deadline: float,
                   nodes: int) -> list[str] | None:
    """The finite bounds of the variables in `rows` that the rows need to stay infeasible (a deletion
    filter: drop a bound, keep it dropped while the rest is still infeasible); None when the drops'
    solves need more than `nodes` nodes in all, SearchTimeLimit past the deadline.
    A semi-continuous variable keeps both bounds. Without rows the conflict is in one variable's own
    bounds (and integrality)."""
    if not rows:
        alone = [v for v in model.variables if not v.semi and _empty_domain(v)]
        return None if not alone else [text for v in alone[:1] for text in _bound_texts(v.name, v.lb, v.ub)]
    used = {n for i in rows for n in (*model.constraints[i].coefs, *(x for key in model.constraints[i].quad for x in key))}
    variables = []
    for v in model.variables:
        if v.name in used or v.name in semi:
            if v.semi and v.name not in semi:  # its switch rows are not in the subset: only its SCIP bounds count
                v = replace(v, semi=False, lb=min(v.lb, 0.0), ub=max(v.ub, 0.0))
            variables.append(replace(v, vtype="I" if v.vtype == "B" else v.vtype))
    sub = Model(variables, [model.constraints[i] for i in rows])
    kept = []
    for v in variables:
        if v.semi:  # kept whole: with "x semi-continuous" they read "x is 0 or within them"
            kept += _bound_texts(v.name, v.lb, v.ub)
            continue
        for side in ("lb", "ub"):
            bound = getattr(v, side)
            if math.isinf(bound):
                continue
            if nodes <= 0:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise SearchTimeLimit("the infeasible-subset search hit its time limit")
            setattr(v, side, -INF if side == "lb" else INF)
            dropped = _solve(sub, limits, left, with_objective=False, nodes=nodes)
            nodes -= dropped.nodes
            if dropped.status == "nodelimit":
                return None
            if dropped.status == "timelimit":
                raise SearchTimeLimit("the infeasible-subset search hit its time limit")
            if dropped.status != "infeasible":
                setattr(v, side, bound)
                kept += _bound_texts(v.name, bound if side == "lb" else -INF, bound if side == "ub" else INF)
    return kept


def _empty_domain(v: Variable) -> bool:
    """No value satisfies the variable's own bounds (and integrality)."""
    if v.lb > v.ub:
        return True
    return v.vtype != "C" and math.isfinite(v.lb) and math.isfinite(v.ub) and math.floor(v.ub + 1e-9) < math.ceil(v.lb - 1e-9)


def _bound_texts(name: str, lb: float, ub: float) -> list[str]:
    if math.isfinite(lb) and lb == ub:
        return [f"{name} = {lb:g}"]
    return ([f"{name} >= {lb:g}"] if math.isfinite(lb) else []) + ([f"{name} <= {ub:g}"] if math.isfinite(ub) else [])
