"""Capture the model a solver-library program builds, at its solve call, as MPS or LP text.

A code answer is never trusted for its printed result. `run_captured` executes it with the
libraries' solve calls replaced by hooks: at the first solve call the model as built at that
moment is written through the library's own writer (MPS: full precision for gurobipy, coptpy,
pyscipopt and pyomo; 13 significant digits for pulp) and the code is stopped by `SolveCalled`, a
BaseException, so `except Exception:` in the answer does not swallow it. scipy's `linprog` and
`milp` take arrays, so their model is built from the arrays with scipy's own input checks and
written as LP text with every float in full (repr) precision.

It runs in the current process and restores every hook on return; isolation (a forked, jailed
child) is the sandbox's job. No torch here: the sandbox server imports this module before forking.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import math
import os
import re
import sys
from dataclasses import dataclass

from solver_ppo.evaluation.config import SolverLimits

SUPPORTED = {"pyscipopt": "pyscipopt", "gurobipy": "gurobipy", "coptpy": "coptpy", "pyomo": "pyomo",
             "pulp": "pulp", "scipy": "scipy"}  # library (top-level module) -> pip package
SOLVE_CALLS = {
    "pyscipopt": "model.optimize()",
    "gurobipy": "model.optimize()",
    "coptpy": "model.solve() or model.solveLP()",
    "pyomo": "SolverFactory(...).solve(model)",
    "pulp": "prob.solve()",
    "scipy": "scipy.optimize.linprog(...) or scipy.optimize.milp(...)",
}
# solver libraries whose answers are recognised but not captured (named in the reason)
OTHER_SOLVER_LIBRARIES = ("ortools", "cvxpy", "mip", "docplex", "cplex", "highspy", "xpress", "mosek", "gekko",
                          "casadi", "picos", "linopy", "amplpy", "pyjulia")
CAPTURE_FILE = "_captured_model"  # written in the work directory, then read back and removed


@dataclass
class CaptureOutcome:
    status: str  # 'captured' | 'syntax_error' | 'exception' | 'no_solve' | 'missing_library' | 'unsupported' | 'too_large'
    reason: str | None = None  # one line saying what happened (None when captured)
    model_text: str | None = None  # the model as MPS or LP text, for solver_ppo.evaluation.model.read_model
    fmt: str | None = None  # 'mps' | 'lp'
    library: str | None = None
    sense_free: bool = False  # scipy: the library only minimizes, see `orient`
    line: int | None = None  # syntax_error / exception: the line of the answer's code it names


class SolveCalled(BaseException):
    """Raised by a hook at the solve call: stops the answer's code (BaseException, so an
    `except Exception:` around the solve in the answer does not catch it)."""


def _imported_modules(code: str) -> list[str]:
    """Top-level module names the code imports, in order (regex fallback when it does not parse)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        found = re.findall(r"^\s*(?:from\s+([A-Za-z_][\w.]*)\s+import|import\s+([A-Za-z_][\w.]*))", code, re.M)
        return [(a or b).split(".")[0] for a, b in found]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module.split(".")[0])
    return names


def detect_library(code: str) -> str | None:
    """The supported solver library the code imports; scipy only when no other one is imported
    (code often imports scipy or numpy next to its solver library)."""
    imported = [m for m in _imported_modules(code) if m in SUPPORTED]
    solvers = [m for m in imported if m != "scipy"]
    return solvers[0] if solvers else (imported[0] if imported else None)


def preload(library: str | None) -> None:
    """Import a supported library (None: none), so that a process forked afterwards starts with
    it loaded; a library that fails to import is skipped (its answers then report why)."""
    if library in SUPPORTED:
        with contextlib.suppress(Exception):
            importlib.import_module(_MODULES.get(library, library))


def installed(library: str) -> bool:
    if sys.modules.get(library) is not None:
        return True
    try:
        return importlib.util.find_spec(library) is not None
    except (ImportError, ValueError):
        return False


def _line_of(tb) -> int | None:
    """The last line of the answer's own code in a traceback."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<answer>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Capture:
    """State of one run: where to write, the limits, and the outcome once a solve call came."""

    def __init__(self, workdir: str, limits: SolverLimits):
        self.path = os.path.join(os.path.abspath(workdir), CAPTURE_FILE)
        self.limits = limits
        self.outcome: CaptureOutcome | None = None

    def too_large(self, library: str, n_vars: int, n_cons: int, n_nonzeros: int | None = None) -> bool:
        """Record 'too_large' (and return True) when the counts are over the limits."""
        for what, n, cap in (("variables", n_vars, self.limits.max_vars), ("constraints", n_cons, self.limits.max_cons),
                             ("nonzeros", n_nonzeros, self.limits.max_nonzeros)):
            if n is not None and n > cap:
                self.outcome = CaptureOutcome("too_large", f"model has {n} {what}, over the limit of {cap}", library=library)
                return True
        return False

    def written(self, library: str, write, fmt: str = "mps", normalize=None) -> None:
        """Call `write(path)` (the library's writer), read the text back and record it."""
        path = f"{self.path}.{fmt}"
        try:
            write(path)
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except Exception as err:
            self.outcome = CaptureOutcome("unsupported", f"{library} could not write the model: {type(err).__name__}: "
                                          f"{_one_line(err)}", library=library)
            return
        finally:
            with contextlib.suppress(OSError):
                os.remove(path)
        self.captured(library, normalize(text) if normalize else text, fmt)

    def captured(self, library: str, text: str, fmt: str, sense_free: bool = False) -> None:
        self.outcome = CaptureOutcome("captured", None, text, fmt, library, sense_free)

    def stop(self):
        raise SolveCalled


# ----------------------------------------------------------------------------- hooks per library
# Each takes the run's _Capture and a list that `_patch` appends (owner, attribute, original) to.


_INHERITED = object()  # restoring it means deleting the patched attribute again


def _patch(undo: list, owner, name: str, value) -> None:
    undo.append((owner, name, owner.__dict__.get(name, _INHERITED)))
    setattr(owner, name, value)


def _hook_pyscipopt(cap: _Capture, undo: list) -> None:
    """pyscipopt.Model is a Cython class whose methods cannot be replaced, so a Python subclass
    with the hooked solve calls takes its place in the module namespaces."""
    import pyscipopt
    import pyscipopt.scip

    base = pyscipopt.scip.Model

    def solve(self, *args, **kwargs):
        if cap.outcome is None and not cap.too_large("pyscipopt", self.getNVars(), self.getNConss()):
            # names with blanks cannot be read back from MPS: SCIP's generic names then
            generic = any(re.search(r"\s", x.name) for x in [*self.getVars(), *self.getConss()])
            cap.written("pyscipopt", lambda path: self.writeProblem(path, genericnames=generic, verbose=False))
        cap.stop()

    hooked = type("Model", (base,), {"optimize": solve, "optimizeNogil": solve, "solveConcurrent": solve,
                                     "__module__": "pyscipopt.scip", "__doc__": base.__doc__})
    _patch(undo, pyscipopt, "Model", hooked)
    _patch(undo, pyscipopt.scip, "Model", hooked)


def _hook_gurobipy(cap: _Capture, undo: list) -> None:
    """Model.optimize / optimizeAsync; gurobipy writes MPS under the size-limited pip licence
    (only optimize is limited), and replaces names with blanks by default names itself."""
    import gurobipy

    def solve(self, *args, **kwargs):
        if cap.outcome is None:
            self.update()
            n_vars, n_cons = self.NumVars, self.NumConstrs + self.NumQConstrs + self.NumGenConstrs + self.NumSOS
            if not cap.too_large("gurobipy", n_vars, n_cons, self.NumNZs):
                cap.written("gurobipy", self.write)
        cap.stop()

    for name in ("optimize", "optimizeAsync"):
        if hasattr(gurobipy.Model, name):
            _patch(undo, gurobipy.Model, name, solve)


def _hook_coptpy(cap: _Capture, undo: list) -> None:
    """Model.solve / solveLP (coptpy builds and writes without a licence file)."""
    import coptpy

    def solve(self, *args, **kwargs):
        if cap.outcome is None:
            n_cons = self.getAttr("Rows") + self.getAttr("QConstrs")
            if not cap.too_large("coptpy", self.getAttr("Cols"), n_cons, self.getAttr("Elems")):
                cap.written("coptpy", self.write)
        cap.stop()

    for name in ("solve", "solveLP"):
        _patch(undo, coptpy.Model, name, solve)


def _hook_pulp(cap: _Capture, undo: list) -> None:
    """LpProblem.solve, whatever solver is passed (LpSolver.solve(prob) calls it too). pulp's
    writer leaves out the objective constant and writes the sense only as a comment unless
    asked: with_objsense=True, and the constant goes into the objective's RHS entry here."""
    import pulp

    def solve(self, *args, **kwargs):
        if cap.outcome is None:
            n_nonzeros = sum(len(c) for c in self.constraints.values())
            if not cap.too_large("pulp", len(self.variables()), len(self.constraints), n_nonzeros):
                constant = float(self.objective.constant) if self.objective is not None else 0.0
                cap.written("pulp", lambda path: self.writeMPS(path, with_objsense=True),
                            normalize=lambda text: _mps_objective_constant(text, constant))
        cap.stop()

    _patch(undo, pulp.LpProblem, "solve", solve)


def _hook_pyomo(cap: _Capture, undo: list) -> None:
    """SolverFactory(name) for any name returns a solver whose solve(model) writes the model
    (pyomo's MPS writer with symbolic labels and every declared variable). Pyomo writes an
    objective constant as a variable ONE_VAR_CONSTANT fixed by an extra row; it is folded back
    into the objective constant."""
    from pyomo.opt.base.solvers import SolverFactoryClass

    class CapturingSolver:
        def __init__(self, name: str = "", **kwargs):
            self.name = name
            self.options: dict = {}
            self._model = None

        def available(self, exception_flag: bool = True) -> bool:
            return True

        def license_is_valid(self) -> bool:
            return True

        def set_instance(self, model, **kwargs) -> None:  # persistent solvers
            self._model = model

        def solve(self, model=None, *args, **kwargs):
            model = self._model if model is None else model
            if cap.outcome is None and model is not None and _pyomo_small_enough(cap, model):
                cap.written("pyomo", lambda path: model.write(path, format="mps", io_options=_PYOMO_MPS_OPTIONS),
                            normalize=_fold_pyomo_constant)
            if cap.outcome is None:
                cap.outcome = CaptureOutcome("no_solve", "no solve call: solve() was given no model", library="pyomo")
            cap.stop()

    def factory(self, name=None, **kwargs):
        return CapturingSolver(name or "", **kwargs)

    _patch(undo, SolverFactoryClass, "__call__", factory)


# names as the code gives them; every declared variable, also one that no objective or row uses
# (pyomo's writer leaves those out by default, and the model would lose them)
_PYOMO_MPS_OPTIONS = {"symbolic_solver_labels": True, "include_all_variable_bounds": True}


def _pyomo_small_enough(cap: _Capture, model) -> bool:
    from pyomo.environ import Constraint, Var

    n_vars = sum(1 for _ in model.component_data_objects(Var, active=True))
    n_cons = sum(1 for _ in model.component_data_objects(Constraint, active=True))
    return not cap.too_large("pyomo", n_vars, n_cons)


def _hook_scipy(cap: _Capture, undo: list) -> None:
    """scipy.optimize.linprog and milp: the model is built from their arrays after scipy's own
    input checks, always as a minimization (scipy has no maximize; see `orient`)."""
    import scipy.optimize

    def linprog(c, A_ub=None, b_ub=None, A_eq=None, b_eq=None, bounds=(0, None), method="highs", callback=None,
                options=None, x0=None, integrality=None):
        from scipy.optimize._linprog_util import _clean_inputs, _LPProblem

        if cap.outcome is None:
            lp = _clean_inputs(_LPProblem(c, A_ub, b_ub, A_eq, b_eq, bounds, x0, integrality))
            rows = [(a, "<=", b) for a, b in zip(lp.A_ub, lp.b_ub)] + [(a, "=", b) for a, b in zip(lp.A_eq, lp.b_eq)]
            _scipy_capture(cap, lp.c, lp.bounds[:, 0], lp.bounds[:, 1], lp.integrality, rows)
        cap.stop()

    def milp(c, *, integrality=None, bounds=None, constraints=None, options=None):
        from scipy.optimize._milp import _milp_iv

        if cap.outcome is None:
            from scipy.sparse import csc_array

            c, integ, lb, ub, indptr, indices, data, b_l, b_u, _ = _milp_iv(c, integrality, bounds, constraints, options)
            a = csc_array((data, indices, indptr), shape=(len(b_l), len(c))).tocsr()  # milp's matrix is by column
            rows = []
            for r in range(len(b_l)):
                start, end = a.indptr[r], a.indptr[r + 1]
                coefs = dict(zip(a.indices[start:end].tolist(), a.data[start:end].tolist()))
                rows.append((coefs, "range", (float(b_l[r]), float(b_u[r]))))
            _scipy_capture(cap, c, lb, ub, integ, rows)
        cap.stop()

    _patch(undo, scipy.optimize, "linprog", linprog)
    _patch(undo, scipy.optimize, "milp", milp)


def _scipy_capture(cap: _Capture, c, lb, ub, integrality, rows) -> None:
    """Record the LP text of `min c x` over `rows` [(coefficients, sense, rhs)], where a dense
    row is an array, a sparse one a {column: value} dict, and sense 'range' has (low, high)."""
    from solver_ppo.evaluation.model import INF, Constraint, Model, Variable, to_lp_text

    n = len(c)
    nonzeros = sum(len(a) if isinstance(a, dict) else int((a != 0).sum()) for a, _, _ in rows)
    if cap.too_large("scipy", n, len(rows), nonzeros):
        return
    integrality = [0] * n if integrality is None else [int(k) for k in integrality]
    if any(k not in (0, 1) for k in integrality):
        cap.outcome = CaptureOutcome("unsupported", "semi-continuous variables (integrality 2 or 3) are not supported",
                                     library="scipy")
        return

    def bound(x: float, default: float) -> float:
        return default if x is None or math.isnan(x) else float(x)

    names = [f"x{j}" for j in range(n)]
    variables = [Variable(names[j], "I" if integrality[j] else "C", bound(lb[j], -INF), bound(ub[j], INF), float(c[j]))
                 for j in range(n)]
    constraints = []
    for r, (a, sense, rhs) in enumerate(rows):
        items = a.items() if isinstance(a, dict) else enumerate(a)
        coefs = {names[j]: float(v) for j, v in items if v != 0}
        if sense != "range":
            constraints.append(Constraint(f"c{r}", coefs, sense, float(rhs)))
        elif rhs[0] == rhs[1]:
            constraints.append(Constraint(f"c{r}", coefs, "=", rhs[0]))
        else:  # lb <= A x <= ub: one row per finite side, as the LP reader splits a range
            sides = [(">=", rhs[0]), ("<=", rhs[1])]
            finite = [(s, b) for s, b in sides if math.isfinite(b)]
            for s, b in finite:
                suffix = "" if len(finite) == 1 else ("_lo" if s == ">=" else "_hi")
                constraints.append(Constraint(f"c{r}{suffix}", dict(coefs), s, b))
    cap.captured("scipy", to_lp_text(Model(variables, constraints, "min", 0.0)), "lp", sense_free=True)


HOOKS = {"pyscipopt": _hook_pyscipopt, "gurobipy": _hook_gurobipy, "coptpy": _hook_coptpy, "pyomo": _hook_pyomo,
         "pulp": _hook_pulp, "scipy": _hook_scipy}
_MODULES = {"pyomo": "pyomo.environ", "scipy": "scipy.optimize"}  # what to import to hook a library


# ----------------------------------------------------------------------------- MPS normalization


def _mps_objective_row(text: str) -> str | None:
    """The first N row of the ROWS section."""
    section = None
    for raw in text.splitlines():
        if raw and not raw[0].isspace():
            section = raw.split()[0].upper()
        elif section == "ROWS":
            fields = raw.split()
            if len(fields) >= 2 and fields[0].upper() == "N":
                return fields[1]
    return None


def _mps_objective_constant(text: str, constant: float) -> str:
    """`text` with an RHS entry on the objective row carrying `constant` (MPS: RHS = -constant)."""
    row = _mps_objective_row(text)
    if constant == 0.0 or row is None:
        return text
    lines = text.splitlines()
    at = next((i + 1 for i, line in enumerate(lines) if line.split()[:1] == ["RHS"]), None)
    if at is None:  # no RHS section: add one before BOUNDS or ENDATA
        at = next(i for i, line in enumerate(lines) if line.split()[:1] in (["BOUNDS"], ["ENDATA"]))
        lines.insert(at, "RHS")
        at += 1
    lines.insert(at, f"    RHS       {row}  {-constant!r}")
    return "\n".join(lines) + "\n"


_PYOMO_CONSTANT = "ONE_VAR_CONSTANT"


def _fold_pyomo_constant(text: str) -> str:
    """Pyomo's free MPS without the ONE_VAR_CONSTANT column and its fixing row; its objective
    coefficient becomes the objective constant (an RHS entry on the objective row)."""
    if _PYOMO_CONSTANT not in text:
        return text
    row = _mps_objective_row(text)
    constant = 0.0
    kept = []
    for line in text.splitlines():
        fields = line.split()
        if _PYOMO_CONSTANT in fields[-1:] and fields[:1] == ["E"]:
            continue  # the row fixing it to 1 (ROWS section)
        if fields[:1] == [_PYOMO_CONSTANT]:
            if fields[1] == row:
                constant += float(fields[2])
            continue  # its COLUMNS entries
        if len(fields) >= 2 and fields[1].endswith(_PYOMO_CONSTANT):
            continue  # its RHS entry and bounds
        kept.append(line)
    return _mps_objective_constant("\n".join(kept) + "\n", constant)


# ----------------------------------------------------------------------------- running an answer


@contextlib.contextmanager
def hooks(libraries, cap: _Capture):
    """Install the hooks of `libraries` for the duration of the block, then restore everything."""
    undo: list = []
    try:
        for library in libraries:
            HOOKS[library](cap, undo)
        yield
    finally:
        for owner, name, original in reversed(undo):
            if original is _INHERITED:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


def run_captured(code: str, workdir: str, limits: SolverLimits | None = None) -> CaptureOutcome:
    """Run the answer's code in this process with cwd=workdir until its first solve call, and
    return the model as built at that moment (or why there is none)."""
    library = detect_library(code)
    if library is None:
        others = [m for m in _imported_modules(code) if m in OTHER_SOLVER_LIBRARIES]
        what = f"it imports {others[0]}, which is" if others else "no solver library is imported; it is"
        return CaptureOutcome("unsupported", f"{what} not one of the supported libraries: {', '.join(SUPPORTED)}")
    if not installed(library):
        return CaptureOutcome("missing_library", f"{library} is not installed: pip install {SUPPORTED[library]}",
                              library=library)
    try:
        compiled = compile(code, "<answer>", "exec")
    except SyntaxError as err:
        return CaptureOutcome("syntax_error", f"{type(err).__name__}: {_one_line(err.msg)} (answer line {err.lineno})",
                              library=library, line=err.lineno)
    except ValueError as err:  # null bytes
        return CaptureOutcome("syntax_error", f"the code cannot be compiled: {_one_line(err)}", library=library)
    # the imported ones, and every supported library already loaded (an import the parser cannot see)
    wanted = {m for m in _imported_modules(code) if m in SUPPORTED} | {m for m in SUPPORTED if sys.modules.get(m) is not None}
    cap = _Capture(workdir, limits or SolverLimits())
    for name in sorted(wanted):
        try:
            importlib.import_module(_MODULES.get(name, name))
        except Exception as err:
            if name == library:
                return CaptureOutcome("missing_library", f"{library} does not import: {type(err).__name__}: "
                                      f"{_one_line(err)}; reinstall it: pip install {SUPPORTED[library]}", library=library)
            wanted.discard(name)
    cwd = os.getcwd()
    error: str | None = None
    line: int | None = None
    with hooks(sorted(wanted), cap):
        try:
            os.chdir(workdir)
            exec(compiled, {"__name__": "__main__", "__builtins__": __builtins__})
        except SolveCalled:
            pass
        except SystemExit as err:
            error = f"the code exited (sys.exit({_one_line(err.code, 60) if err.code is not None else ''})) before a solve call"
        except BaseException as err:  # noqa: BLE001 - any failure of the answer is its reason
            line = _line_of(err.__traceback__)
            where = f" (answer line {line})" if line else ""
            error = f"{type(err).__name__}: {_one_line(err, 200)}{where}"
        finally:
            os.chdir(cwd)
    if cap.outcome is not None:  # a solve call came first (even if the code went on after catching it)
        return cap.outcome
    if error is not None:
        status = "no_solve" if error.startswith("the code exited") else "exception"
        return CaptureOutcome(status, error, library=library, line=line)
    return CaptureOutcome("no_solve", f"no solve call: the code ended without calling {SOLVE_CALLS[library]} ({library})",
                          library=library)


def orient(model, reference_sense: str | None):
    """A sense-free capture (scipy: `min f x` is how a maximization of -f x is written) stated in
    the reference's sense: against a 'max' reference it becomes `max -f x`, so its optimum and
    graph compare with the reference directly. Other models are returned unchanged."""
    if reference_sense != "max" or model.sense == "max":
        return model
    for v in model.variables:
        v.obj = -v.obj
    model.obj_constant = -model.obj_constant
    model.sense = "max"
    return model
