"""Differential fuzzing of the evaluator: Hypothesis strategies for small models and their text
in the forms the field writes (LP and MPS), programs that build them in each solver library,
and the checks that compare us with the solvers themselves. Used by tests/test_fuzz_evaluation.py
(a fixed-seed slice) and tools/fuzz_evaluation.py (the long run); docs/evaluation.md has the figures.

A generated case knows what its text means (`Case.model`, in the readers' conventions), so our
reading is checked twice: against that model (graph distance 0) and against every installed
solver that reads the file (status and objective, 1e-6). Each choice the renderer makes is
recorded as a construct class, so a disagreement names the constructs it came from.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from dataclasses import dataclass, field

from hypothesis import strategies as st

from solver_ppo.evaluation.model import INF, Constraint, Model, Variable, quad_key

TOL = 1e-6

# Strategies are built once and reused: building one per draw costs more than the solvers do.
_BOOL = st.booleans()


@functools.lru_cache(maxsize=None)
def _ints(lo: int, hi: int):
    return st.integers(lo, hi)


@functools.lru_cache(maxsize=None)
def _perms(n: int):
    return st.permutations(range(n))


@functools.lru_cache(maxsize=None)
def _texts(alphabet: str, max_size: int):
    return st.text(alphabet, max_size=max_size)


def _pick(draw, options):
    """One of options (shrinks towards the first)."""
    options = list(options)
    return options[draw(_ints(0, len(options) - 1))]


def _subset(draw, items: list, min_size: int = 1) -> list:
    """A sub-list of items, in a drawn order, with at least min_size of them."""
    order = [items[i] for i in draw(_perms(len(items)))]
    return order[: draw(_ints(min_size, len(items)))]


# ----------------------------------------------------------------------------- models


@dataclass
class Row:
    """A generated row: lo <= coefs·x + quad <= hi (lo == hi: an equation; one side may be infinite)."""

    name: str
    coefs: dict[str, float]
    lo: float
    hi: float
    quad: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def ranged(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi


@dataclass
class Spec:
    """A generated model before it is written: variables, rows (ranges kept whole), objective."""

    variables: list[Variable]
    rows: list[Row]
    sense: str
    constant: float
    quad_obj: dict[tuple[str, str], float] = field(default_factory=dict)

    def model(self) -> Model:
        """The model in the readers' conventions: a ranged row is a '>=' row and a '<=' row."""
        cons = []
        for r in self.rows:
            if r.lo == r.hi:
                cons.append(Constraint(r.name, dict(r.coefs), "=", r.lo, dict(r.quad)))
                continue
            if math.isfinite(r.lo):
                cons.append(Constraint(f"{r.name}_lo", dict(r.coefs), ">=", r.lo, dict(r.quad)))
            if math.isfinite(r.hi):
                cons.append(Constraint(f"{r.name}_hi", dict(r.coefs), "<=", r.hi, dict(r.quad)))
        variables = [Variable(v.name, v.vtype, v.lb, v.ub, v.obj, v.semi) for v in self.variables]
        return Model(variables, cons, self.sense, self.constant, dict(self.quad_obj))


# Names: a letter no LP keyword or number starts with, then the characters LP files allow.
_FIRST = "xyzwuvpqk"
_SAFE_TAIL = "abcdxyz0123456789_"
_LP_TAIL = _SAFE_TAIL + ".[],()#$@!~&"


@st.composite
def names(draw, n: int, tail: str = _SAFE_TAIL, max_len: int = 8) -> list[str]:
    """n distinct names (at most max_len characters: fixed MPS has 8-column fields)."""
    out: list[str] = []
    for _ in range(n):
        base = name = _pick(draw, _FIRST) + draw(_texts(tail, max_len - 1))
        k = 0
        while name in out:  # Hypothesis favours short names: number the repeats
            k += 1
            name = f"{base[: max_len - len(str(k)) - 1]}_{k}"
        out.append(name)
    return out


def _number(draw, nonzero: bool = True, lo: int = -9, hi: int = 9) -> float:
    """Integers and quarters: exact in binary at the digits written, so no writer rounds them."""
    while True:
        value = draw(_ints(lo, hi)) if draw(_BOOL) else draw(_ints(lo * 4, hi * 4)) / 4
        if value != 0 or not nonzero:
            return float(value)


@st.composite
def specs(draw, max_vars: int = 4, max_rows: int = 4, quadratic: bool = True, semi: bool = True, ranges: bool = True,
          name_chars: str = _SAFE_TAIL) -> Spec:
    """A small LP/MILP/QP: 1..max_vars variables with every kind of bound and type, 0..max_rows rows."""
    n = draw(_ints(1, max_vars))
    var_names = draw(names(n, name_chars))
    variables = []
    for name in var_names:
        vtype = _pick(draw, "CCCIB")
        if vtype == "B":
            lb, ub = 0.0, 1.0
        else:
            kind = _pick(draw, ["default", "upper", "box", "free", "minus_inf", "lower", "fixed", "negative_box"])
            a, b = sorted((_number(draw, False), _number(draw, False)))
            lb, ub = {"default": (0.0, INF), "upper": (0.0, abs(b) + 1), "box": (a, b), "free": (-INF, INF),
                      "minus_inf": (-INF, b), "lower": (a, INF), "fixed": (a, a), "negative_box": (-abs(b) - 2, -abs(b) - 1)}[kind]
        is_semi = semi and vtype == "C" and draw(_ints(0, 9)) == 0
        if is_semi:  # solvers agree on semi-continuous variables with 0 <= lb <= ub < inf
            lb, ub = float(draw(_ints(0, 3))), float(draw(_ints(4, 9)))
        variables.append(Variable(name, vtype, lb, ub, _number(draw, nonzero=False), is_semi))
    rows = []
    for name in draw(names(draw(_ints(0, max_rows)), name_chars)):
        coefs = {v: _number(draw) for v in _subset(draw, var_names)}
        kind = _pick(draw, ["<=", ">=", "=", "range"] if ranges else ["<=", ">=", "="])
        rhs = _number(draw, False, -20, 20)
        lo, hi = {"<=": (-INF, rhs), ">=": (rhs, INF), "=": (rhs, rhs), "range": (rhs, rhs + abs(_number(draw)))}[kind]
        rows.append(Row(name, coefs, lo, hi))
    sense = _pick(draw, ["min", "max"])
    quad_obj: dict[tuple[str, str], float] = {}
    continuous = [v.name for v in variables if v.vtype == "C" and not v.semi]
    if quadratic and continuous and draw(_ints(0, 3)) == 0:
        # convex in the objective's direction (a sum of squares, signed): every QP solver takes it
        sign = 1.0 if sense == "min" else -1.0
        for v in _subset(draw, continuous)[:2]:
            quad_obj[(v, v)] = sign * float(draw(_ints(1, 4)))
        if len(quad_obj) == 2 and draw(_BOOL):
            (a, _), (b, _) = quad_obj
            quad_obj[quad_key(a, b)] = sign * 1.0  # |Q_ab| <= sqrt(Q_aa Q_bb): still convex
    if quadratic and continuous and draw(_ints(0, 5)) == 0:
        # a convex quadratic row: a sum of squares <= r
        row_name = draw(names(1, name_chars, max_len=7))[0] + "q"
        rows.append(Row(row_name, {}, -INF, float(draw(_ints(1, 9))), {(v, v): 1.0 for v in _subset(draw, continuous)[:2]}))
    constant = _number(draw, nonzero=False, lo=-20, hi=20) if draw(_BOOL) else 0.0
    return Spec(variables, rows, sense, constant, quad_obj)


# ----------------------------------------------------------------------------- LP text


@dataclass
class Case:
    """Model text and what it means; `classes` are the constructs it was written with."""

    text: str
    fmt: str  # 'lp' | 'mps'
    model: Model
    classes: list[str]
    dialect: str


class _Writer:
    """Draws the renderer's choices and records the construct classes they stand for."""

    def __init__(self, draw, prefix: str):
        self.draw = draw
        self.prefix = prefix
        self.classes: list[str] = []

    def pick(self, options: list, cls: dict | None = None):
        """One of options; cls maps an option to the class it stands for (absent: not recorded)."""
        value = _pick(self.draw, options)
        if cls and cls.get(value):
            self.mark(cls[value])
        return value

    def mark(self, cls: str) -> None:
        cls = f"{self.prefix}:{cls}"
        if cls not in self.classes:
            self.classes.append(cls)


def _fmt_lp_number(w: _Writer, x: float, style: str) -> str:
    if style == "sci":
        w.mark("scientific-notation")
        return w.pick([f"{x:e}", f"{x:.3E}", f"{x * 10:g}e-1"])
    if style == "float":
        return repr(float(x))
    return repr(int(x)) if float(x).is_integer() else repr(float(x))


def _lp_terms(w: _Writer, coefs: dict[str, float], number_style: str, layout: str) -> list[str]:
    """Terms as text pieces (each with its sign), in a drawn order."""
    pieces = []
    items = list(coefs.items())
    order = w.draw(_perms(len(items))) if len(items) > 1 else range(len(items))
    for k in order:
        name, c = items[k]
        sign = "-" if c < 0 else "+"
        mag = abs(c)
        if mag == 1.0 and w.draw(_BOOL):
            w.mark("implicit-coefficient-1")
            body = name
        else:
            num = _fmt_lp_number(w, mag, number_style)
            body = {"spaced": f"{num} {name}", "star": f"{num} * {name}", "compact": f"{num}{name}"}[layout]
        pieces.append(f"{sign}{'' if layout == 'compact' else ' '}{body}")
    return pieces


def _join(w: _Writer, pieces: list[str], break_lines: bool) -> str:
    if not pieces:
        return ""
    first = pieces[0][1:].lstrip() if pieces[0].startswith("+") else pieces[0]
    out = [first]
    for p in pieces[1:]:
        if break_lines and w.draw(_ints(0, 2)) == 0:
            w.mark("line-break-in-expression")
            out.append("\n   " + p)
        else:
            out.append(" " + p)
    return "".join(out)


def _quad_text(w: _Writer, quad: dict[tuple[str, str], float], factor: float) -> str:
    """`[ ... ]` contents: each product with its coefficient times factor."""
    terms = []
    for (a, b), c in quad.items():
        c = c * factor
        terms.append(f"{'-' if c < 0 else '+'} {_fmt_lp_number(w, abs(c), 'int')} {f'{a} ^ 2' if a == b else f'{a} * {b}'}")
    text = " ".join(terms)
    return text[2:] if text.startswith("+ ") else text


_ALT_SENSE = {"=<": "senses-=<-=>-<->", "<": "senses-=<-=>-<->", "=>": "senses-=<-=>-<->", ">": "senses-=<-=>-<->"}


@st.composite
def lp_cases(draw, spec: Spec | None = None) -> Case:
    """LP text of a generated model, with the constructs drawn line by line (`Case.classes`)."""
    if spec is None:
        spec = draw(specs(name_chars=_pick(draw, [_SAFE_TAIL, _LP_TAIL])))
    w = _Writer(draw, "lp")
    if any(c in v.name for v in spec.variables for c in ".[],()#$@!~&"):
        w.mark("names-with-brackets-dots")
    layout = w.pick(["spaced", "spaced", "star", "compact"], {"star": "coefficient-star", "compact": "no-spaces"})
    number_style = w.pick(["int", "int", "float", "sci"], {"float": "decimal-point"})
    break_lines = w.draw(_BOOL)
    comments = w.draw(_BOOL)
    lines: list[str] = []
    if comments:
        w.mark("comments")
        lines.append("\\ generated model")
    spellings = {"max": ["Maximize", "Maximise", "MAXIMIZE", "max", "maximum"], "min": ["Minimize", "Minimise", "MINIMIZE", "min", "minimum"]}
    header = w.pick(spellings[spec.sense], {"max": "short-headers", "min": "short-headers", "maximum": "short-headers",
                                            "minimum": "short-headers", "Maximise": "header-british-spelling", "Minimise": "header-british-spelling",
                                            "MAXIMIZE": "header-spelling", "MINIMIZE": "header-spelling"})
    lines.append(header + (" \\ the objective" if comments and w.draw(_BOOL) else ""))
    obj_pieces = _lp_terms(w, {v.name: v.obj for v in spec.variables if v.obj != 0.0}, number_style, layout)
    if spec.quad_obj:
        halve = w.pick([True, False], {True: "quadratic-objective-halved", False: "quadratic-objective-literal"})
        obj_pieces.append(f"+ [ {_quad_text(w, spec.quad_obj, 2.0 if halve else 1.0)} ]" + (" / 2" if halve else ""))
    if spec.constant != 0.0:
        w.mark("objective-constant")
        c = spec.constant
        piece = f"{'-' if c < 0 else '+'} {_fmt_lp_number(w, abs(c), number_style)}"
        obj_pieces.insert(0 if obj_pieces and w.draw(_BOOL) else len(obj_pieces), piece)
    label = w.pick(["obj: ", "", "cost: "], {"": "unlabelled-objective"})
    lines.append(f" {label}{_join(w, obj_pieces, break_lines) or '0 ' + spec.variables[0].name}")
    lines.append(w.pick(["Subject To", "Subject To", "subject to", "st", "s.t.", "such that", "ST"],
                        {"st": "short-headers", "s.t.": "header-s.t.", "such that": "header-such-that", "ST": "short-headers"}))
    senses = {"<=": ["<=", "<=", "=<", "<"], ">=": [">=", ">=", "=>", ">"], "=": ["="]}
    for row in spec.rows:
        label = "" if w.draw(_ints(0, 4)) == 0 else f"{row.name}: "
        if not label:
            w.mark("unlabelled-row")
        pieces = _lp_terms(w, row.coefs, number_style, layout)
        if row.quad:
            w.mark("quadratic-row")
            pieces.append(f"+ [ {_quad_text(w, row.quad, 1.0)} ]")
        if row.ranged:
            w.mark("ranged-row")
            expr = _join(w, pieces, False)  # the side after a sense ends with its line (docs/lp-mps-support.md)
            lo, hi = _fmt_lp_number(w, row.lo, number_style), _fmt_lp_number(w, row.hi, number_style)
            lines.append(f" {label}{lo} <= {expr} <= {hi}" if w.draw(_BOOL) else f" {label}{hi} >= {expr} >= {lo}")
            continue
        sense, rhs = ("=", row.lo) if row.lo == row.hi else ((">=", row.lo) if math.isfinite(row.lo) else ("<=", row.hi))
        spelled = w.pick(senses[sense], _ALT_SENSE)
        form = w.pick(["plain", "plain", "rhs-left", "constant-left", "variable-right"] if not row.quad else ["plain"],
                      {"rhs-left": "rhs-on-the-left", "constant-left": "constant-on-the-left", "variable-right": "variable-on-the-right"})
        if form == "constant-left":
            k = _number(w.draw)
            pieces.append(f"{'-' if k < 0 else '+'} {_fmt_lp_number(w, abs(k), number_style)}")
            rhs = rhs + k
        right_terms = ""
        if form == "variable-right" and len(pieces) > 1:
            moved = pieces.pop()
            right_terms = " " + ("- " if moved.startswith("+") else "+ ") + moved[1:].lstrip()
        expr = _join(w, pieces, break_lines and form != "rhs-left")
        rhs_text = _fmt_lp_number(w, rhs, number_style)
        if form == "rhs-left":
            lines.append(f" {label}{rhs_text} {({'<=': '>=', '>=': '<=', '=': '='})[sense]} {expr}")
        else:
            lines.append(f" {label}{expr} {spelled} {rhs_text}{right_terms}")
    ints = [v.name for v in spec.variables if v.vtype == "I"]
    bins = [v.name for v in spec.variables if v.vtype == "B"]
    bins_as_general = bool(bins) and w.pick([False, False, True], {True: "binary-as-general-with-bounds"})
    bound_lines = [f" 0 <= {b} <= 1" for b in bins] if bins_as_general else []
    used = {v.name for v in spec.variables if v.obj != 0.0 or v.vtype != "C" or v.semi}
    used |= {n for r in spec.rows for n in r.coefs} | {n for key in [*spec.quad_obj, *(k for r in spec.rows for k in r.quad)] for n in key}
    for v in spec.variables:
        if v.vtype != "B":
            bound_lines += _lp_bounds(w, v, number_style, declare=v.name not in used)
    if bound_lines or w.draw(_BOOL):
        lines.append(w.pick(["Bounds", "Bounds", "bounds", "Bound"], {"Bound": "header-spelling"}))
        lines += bound_lines
    if bins_as_general:
        ints, bins = ints + bins, []
    if ints:
        lines.append(w.pick(["Generals", "General", "Integers", "Gen"], {"Integers": "integers-section", "Gen": "short-headers"}))
        lines.append(" " + " ".join(ints))
    if bins:
        lines.append(w.pick(["Binaries", "Binary", "Bin"], {"Bin": "short-headers"}))
        lines.append(" " + " ".join(bins))
    semis = [v.name for v in spec.variables if v.semi]
    if semis:
        w.mark("semi-continuous")
        lines.append(w.pick(["Semi-continuous", "Semis", "Semi"]))
        lines.append(" " + " ".join(semis))
    if w.draw(_ints(0, 5)):
        lines.append(w.pick(["End", "end", "END"]))
    else:
        w.mark("no-end")
    if comments and w.draw(_BOOL):
        lines.insert(w.draw(_ints(1, len(lines))), "\\ a comment line")
    return Case("\n".join(lines) + "\n", "lp", spec.model(), w.classes or ["lp:plain"], "lp")


def _lp_bounds(w: _Writer, v: Variable, number_style: str, declare: bool) -> list[str]:
    """Bound lines of v; declare: v appears nowhere else, so a default bound is written to declare it."""
    f = lambda x: _fmt_lp_number(w, x, number_style)  # noqa: E731
    inf_word = lambda: w.pick(["inf", "infinity", "1e30", "1e+30"], {"1e30": "bound-1e30", "1e+30": "bound-1e30"})  # noqa: E731
    lb, ub, n = v.lb, v.ub, v.name
    if (lb, ub) == (0.0, INF):
        if declare or w.draw(_ints(0, 4)) == 0:
            w.mark("explicit-default-bound")
            return [w.pick([f" {n} >= 0", f" 0 <= {n} <= +{inf_word()}"])]
        return []
    if lb == -INF and ub == INF:
        w.mark("free-bound")
        return [w.pick([f" {n} free", f" {n} FREE", f" -{inf_word()} <= {n} <= +{inf_word()}", f" {n} >= -{inf_word()}"])]
    if lb == ub:
        w.mark("fixed-bound")
        return [w.pick([f" {n} = {f(lb)}", f" {f(lb)} <= {n} <= {f(ub)}"])]
    if lb == -INF:
        w.mark("minus-infinity-lower-bound")
        return w.pick([[f" -{inf_word()} <= {n} <= {f(ub)}"], [f" {n} >= -{inf_word()}", f" {n} <= {f(ub)}"]])
    if lb < 0:
        w.mark("negative-lower-bound")
    if ub == INF:
        return [w.pick([f" {n} >= {f(lb)}", f" {f(lb)} <= {n}", f" {f(lb)} <= {n} <= +{inf_word()}"])]
    if lb == 0.0:
        return [w.pick([f" {n} <= {f(ub)}", f" 0 <= {n} <= {f(ub)}"])]
    return w.pick([[f" {f(lb)} <= {n} <= {f(ub)}"], [f" {n} >= {f(lb)}", f" {n} <= {f(ub)}"], [f" {f(ub)} >= {n} >= {f(lb)}"]])


# ----------------------------------------------------------------------------- MPS text


def _mps_line(fixed: bool, fields: list[str]) -> str:
    """A data line: fixed MPS puts fields at columns 2, 5, 15, 25, 40, 50 (1-based)."""
    if not fixed:
        return " " + " ".join(f for f in fields if f)
    line = ""
    for start, value in zip([1, 4, 14, 24, 39, 49], fields):
        line = line.ljust(start) + value
    return line


def _mps_number(w: _Writer, x: float) -> str:
    if w.draw(_ints(0, 5)) == 0:
        w.mark("scientific-notation")
        return f"{x:.6e}"
    return repr(int(x)) if float(x).is_integer() else repr(float(x))


@st.composite
def mps_cases(draw, spec: Spec | None = None) -> Case:
    """Fixed or free MPS of a generated model: RANGES, objective constants, MARKER blocks, every bound type."""
    if spec is None:
        spec = draw(specs(name_chars=_SAFE_TAIL))
    w = _Writer(draw, "mps")
    fixed = w.pick([True, False], {True: "fixed", False: "free"})
    line = lambda *f: _mps_line(fixed, list(f))  # noqa: E731
    num = lambda x: _mps_number(w, x)  # noqa: E731
    lines = ["NAME          fuzz"]
    if spec.sense == "max":
        if w.draw(_BOOL):
            w.mark("objsense-section")
            lines += ["OBJSENSE", "    MAX"]
        else:
            w.mark("objsense-inline")
            lines.append("OBJSENSE MAX")
    obj_row = _pick(draw, ["obj", "COST", "r_0"])
    lines += ["ROWS", line("N", obj_row)]
    mps_rows = []  # (name, type, rhs, range or None, row)
    for k, r in enumerate(spec.rows):
        name = f"{r.name[:7]}{k}"  # distinct and at most 8 characters
        if r.lo == r.hi:
            mps_rows.append((name, "E", r.lo, None, r))
        elif r.ranged:
            kind = w.pick(["L", "G", "E+", "E-"], {"L": "ranges-on-L", "G": "ranges-on-G", "E+": "ranges-on-E-positive", "E-": "ranges-on-E-negative"})
            width = r.hi - r.lo
            rhs, rng = {"L": (r.hi, width), "G": (r.lo, width), "E+": (r.lo, width), "E-": (r.hi, -width)}[kind]
            if kind in ("L", "G") and w.draw(_BOOL):
                rng = -rng  # the sign of R does not matter on L and G rows
                w.mark("ranges-negative-on-L-G")
            mps_rows.append((name, kind[0], rhs, rng, r))
        elif math.isfinite(r.hi):
            mps_rows.append((name, "L", r.hi, None, r))
        else:
            mps_rows.append((name, "G", r.lo, None, r))
    lines += [line(kind, name) for name, kind, *_ in mps_rows]
    lines.append("COLUMNS")
    in_marker = False
    marker_count = 0
    markered: set[str] = set()  # integer columns declared inside a MARKER block
    two_per_line = w.draw(_BOOL)
    for v in spec.variables:
        use_marker = v.vtype in ("I", "B") and (v.vtype == "B" or w.draw(_ints(0, 3)) > 0)
        if use_marker and not in_marker:
            w.mark("marker-integer-block")
            lines.append(line("", f"MARKER{marker_count}", "'MARKER'", "", "'INTORG'"))
            in_marker = True
        elif not use_marker and in_marker:
            lines.append(line("", f"MARKER{marker_count}", "'MARKER'", "", "'INTEND'"))
            marker_count += 1
            in_marker = False
        if use_marker:
            markered.add(v.name)
        entries = ([(obj_row, v.obj)] if v.obj != 0.0 else []) + [(name, r.coefs[v.name]) for name, _, _, _, r in mps_rows if v.name in r.coefs]
        entries = entries or [(obj_row, 0.0)]  # a column exists by appearing in COLUMNS
        while entries:
            if two_per_line and len(entries) >= 2:
                w.mark("two-entries-per-line")
                (r1, c1), (r2, c2), entries = entries[0], entries[1], entries[2:]
                lines.append(line("", v.name, r1, num(c1), r2, num(c2)))
            else:
                (r1, c1), entries = entries[0], entries[1:]
                lines.append(line("", v.name, r1, num(c1)))
    if in_marker:
        lines.append(line("", f"MARKER{marker_count}", "'MARKER'", "", "'INTEND'"))
    rhs_entries = [(name, rhs) for name, _, rhs, _, _ in mps_rows if rhs != 0.0]
    if spec.constant != 0.0:
        w.mark("objective-constant-as-rhs")
        rhs_entries.insert(w.draw(_ints(0, len(rhs_entries))), (obj_row, -spec.constant))
    if rhs_entries:
        lines.append("RHS")
        set_name = _pick(draw, ["RHS", "B", "rhs1"])
        lines += [line("", set_name, name, num(value)) for name, value in rhs_entries]
    ranged = [(name, rng) for name, _, _, rng, _ in mps_rows if rng is not None]
    if ranged:
        lines.append("RANGES")
        lines += [line("", "RNG", name, num(rng)) for name, rng in ranged]
    bound_lines = []
    for v in spec.variables:
        bound_lines += _mps_bounds(w, v, v.name in markered, line, num)
    if bound_lines:
        lines.append("BOUNDS")
        lines += bound_lines
    if spec.quad_obj:
        section = w.pick(["QUADOBJ", "QMATRIX"], {"QUADOBJ": "quadobj", "QMATRIX": "qmatrix"})
        lines.append(section)
        for (a, b), c in spec.quad_obj.items():  # c (of a·b) is ½ Q_aa, or Q_ab (QUADOBJ: upper triangle), or ½(Q_ab + Q_ba)
            if a == b:
                lines.append(line("", a, a, num(2 * c)))
            elif section == "QUADOBJ":
                lines.append(line("", a, b, num(c)))
            else:
                lines += [line("", a, b, num(c)), line("", b, a, num(c))]
    for name, _, _, _, r in mps_rows:
        if r.quad:
            w.mark("qcmatrix")
            lines.append(f"QCMATRIX   {name}")
            for (a, b), c in r.quad.items():
                lines += [line("", a, a, num(c))] if a == b else [line("", a, b, num(c / 2)), line("", b, a, num(c / 2))]
    lines.append("ENDATA")
    return Case("\n".join(lines) + "\n", "mps", spec.model(), w.classes, "mps-fixed" if fixed else "mps-free")


def _mps_bounds(w: _Writer, v: Variable, in_marker: bool, line, num) -> list[str]:
    b = _pick(w.draw, ["BND", "BOUND"])
    n, lb, ub = v.name, v.lb, v.ub
    mark = lambda *kinds: [w.mark(f"bound-{k}") for k in kinds]  # noqa: E731
    if v.semi:
        mark("SC")
        out = [line("SC", b, n, num(ub))]
        if lb != 0.0:
            mark("LO")
            out.insert(0, line("LO", b, n, num(lb)))
        return out
    if v.vtype == "B":
        if in_marker:
            how = w.pick(["none", "UP", "BV"], {"none": "marker-integer-without-bounds-is-binary", "UP": "bound-UP-1-in-marker"})
            if how != "BV":
                return [] if how == "none" else [line("UP", b, n, "1")]
        mark("BV")
        return [line("BV", b, n)] if w.draw(_BOOL) else [line("BV", b, n, "1")]
    if v.vtype == "I" and not in_marker:  # an integer declared by LI/UI bounds rather than a MARKER block
        mark("LI-UI")
        return [line("LI", b, n, num(lb) if math.isfinite(lb) else "-1e30"), line("UI", b, n, num(ub) if math.isfinite(ub) else "1e30")]
    if (lb, ub) == (0.0, INF):
        if in_marker:  # without a bound it would be binary
            mark("PL-or-LO-0-on-marker-integer")
            return [line("PL", b, n)] if w.draw(_BOOL) else [line("LO", b, n, "0")]
        if w.draw(_ints(0, 4)) == 0:
            mark("PL")
            return [line("PL", b, n)]
        return []
    if lb == -INF and ub == INF:
        mark("FR")
        return [line("FR", b, n)]
    if lb == ub:
        mark("FX")
        return [line("FX", b, n, num(lb))]
    out = []
    if lb == -INF:
        if ub < 0 and w.draw(_BOOL):
            mark("UP-negative-alone")  # the MPS convention: the lower bound becomes -inf
            return [line("UP", b, n, num(ub))]
        mark("MI")
        out.append(line("MI", b, n))
    elif lb != 0.0 or w.draw(_ints(0, 3)) == 0:
        mark("LO")
        out.append(line("LO", b, n, num(lb)))
    if math.isfinite(ub):
        mark("UP")
        out.append(line("UP", b, n, num(ub)))
    return out


# ----------------------------------------------------------------------------- the solvers' readers


@dataclass
class Outcome:
    """What one reader made of a file: refused (reason), or a status with the objective when optimal."""

    status: str  # 'refused' | 'optimal' | 'infeasible' | 'unbounded' | 'inf_or_unbd' | another (not definite)
    objective: float | None = None
    reason: str = ""

    @property
    def read(self) -> bool:
        return self.status != "refused"

    @property
    def definite(self) -> bool:
        return self.status in ("optimal", "infeasible", "unbounded", "inf_or_unbd")


@contextlib.contextmanager
def quiet():
    """Silence C-level stdout and stderr (solver banners and warnings)."""
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class Readers:
    """The installed solvers' file readers, each solving what it read (gap 0, 10 s, one thread)."""

    def __init__(self):
        self.available: dict[str, object] = {}
        for name, module in (("gurobi", "gurobipy"), ("scip", "pyscipopt"), ("copt", "coptpy"), ("highs", "highspy")):
            try:
                with quiet():
                    self.available[name] = __import__(module)
            except ImportError:
                continue
        self._grb_env = None
        self._copt_env = None

    def run(self, path: str) -> dict[str, Outcome]:
        out = {}
        for name in self.available:
            try:
                with quiet():
                    out[name] = getattr(self, f"_{name}")(path)
            except Exception as err:  # noqa: BLE001 - a reader's refusal is its answer here
                out[name] = Outcome("refused", reason=" ".join(str(err).split())[:200])
        return out

    def _gurobi(self, path: str) -> Outcome:
        gp = self.available["gurobi"]
        if self._grb_env is None:
            self._grb_env = gp.Env(params={"OutputFlag": 0})
        with gp.read(path, self._grb_env) as m:
            m.Params.MIPGap, m.Params.MIPGapAbs, m.Params.TimeLimit, m.Params.Threads = 0.0, 0.0, 10.0, 1
            m.optimize()
            status = {gp.GRB.OPTIMAL: "optimal", gp.GRB.INFEASIBLE: "infeasible", gp.GRB.UNBOUNDED: "unbounded",
                      gp.GRB.INF_OR_UNBD: "inf_or_unbd"}.get(m.Status, f"status {m.Status}")
            return Outcome(status, m.ObjVal if status == "optimal" else None)

    def _scip(self, path: str) -> Outcome:
        scip = self.available["scip"].Model()
        scip.hideOutput()
        scip.readProblem(path)
        scip.setParam("limits/time", 10.0)
        scip.setParam("limits/gap", 0.0)
        scip.setParam("limits/absgap", 0.0)
        scip.optimize()
        status = {"inforunbd": "inf_or_unbd"}.get(scip.getStatus(), scip.getStatus())
        return Outcome(status, scip.getObjVal() if status == "optimal" else None)

    def _copt(self, path: str) -> Outcome:
        cp = self.available["copt"]
        if self._copt_env is None:
            self._copt_env = cp.Envr()
        m = self._copt_env.createModel("fuzz")
        for param, value in (("Logging", 0), ("TimeLimit", 10.0), ("RelGap", 0.0), ("AbsGap", 0.0), ("Threads", 1)):
            m.setParam(param, value)
        m.read(path)
        m.solve()
        status = {cp.COPT.OPTIMAL: "optimal", cp.COPT.INFEASIBLE: "infeasible", cp.COPT.UNBOUNDED: "unbounded",
                  cp.COPT.INF_OR_UNB: "inf_or_unbd"}.get(m.status, f"status {m.status}")
        return Outcome(status, m.objval if status == "optimal" else None)

    def _highs(self, path: str) -> Outcome:
        hs = self.available["highs"]
        h = hs.Highs()
        for option, value in (("output_flag", False), ("time_limit", 10.0), ("mip_rel_gap", 0.0), ("mip_abs_gap", 0.0), ("threads", 1)):
            h.setOptionValue(option, value)
        if h.readModel(path) != hs.HighsStatus.kOk:
            return Outcome("refused", reason="readModel returned an error")
        h.run()
        ms = h.getModelStatus()
        status = {hs.HighsModelStatus.kOptimal: "optimal", hs.HighsModelStatus.kInfeasible: "infeasible",
                  hs.HighsModelStatus.kUnbounded: "unbounded", hs.HighsModelStatus.kUnboundedOrInfeasible: "inf_or_unbd"}.get(ms, h.modelStatusToString(ms))
        return Outcome(status, h.getInfo().objective_function_value if status == "optimal" else None)


def ours(text: str, fmt: str) -> tuple[Outcome, Model | None]:
    """Our reader and solver (solve_model: SCIP through its API) on the text."""
    from solver_ppo.evaluation import ModelReadError, SolverLimits, read_model, solve_model

    try:
        model = read_model(text, fmt)
    except ModelReadError as err:
        return Outcome("refused", reason=str(err)), None
    result = solve_model(model, SolverLimits(time_limit_s=10.0, wall_limit_s=30.0))
    return Outcome(result.status, result.objective if result.status == "optimal" else None, result.reason), model


def same_result(a: Outcome, b: Outcome) -> bool:
    """Same status (infeasible-or-unbounded goes with either) and, when optimal, objectives within 1e-6 (absolute-relative)."""
    undecided = {"infeasible", "unbounded", "inf_or_unbd"}
    if a.status == "inf_or_unbd" or b.status == "inf_or_unbd":
        return a.status in undecided and b.status in undecided
    if a.status != b.status:
        return False
    return a.status != "optimal" or abs(a.objective - b.objective) <= TOL * (1.0 + max(abs(a.objective), abs(b.objective)))


@dataclass
class Verdict:
    """One file compared. kind: 'agree' (ours is the generated model and matches the solvers'
    consensus, or there is none), 'disagree' (two or more solvers read and solved it to one result
    and ours differs, or our reading is not the generated model), 'stricter' (we refuse what every
    installed solver reads), 'refused_some_read' (we refuse, some solvers read it), 'all_refuse',
    'crash' (an exception, or solve_model's 'error')."""

    kind: str
    ours: Outcome
    solvers: dict[str, Outcome]
    detail: str = ""


CONSENSUS = "differs from the solvers' consensus"


def compare_file(case: Case, readers: Readers, workdir: str) -> Verdict:
    """Our reading of the case against the generated model and against every installed reader."""
    from solver_ppo.evaluation import graph_distance

    path = os.path.join(workdir, f"case.{case.fmt}")
    with open(path, "w") as f:
        f.write(case.text)
    solvers = readers.run(path)
    try:
        mine, model = ours(case.text, case.fmt)
        distance = None if model is None else graph_distance(model, case.model)
    except Exception as err:  # noqa: BLE001 - a crash is what the fuzzer looks for
        return Verdict("crash", Outcome("crash", reason=f"{type(err).__name__}: {err}"), solvers, f"{type(err).__name__}: {err}")
    if mine.status == "error":
        return Verdict("crash", mine, solvers, f"solve_model: {mine.reason}")
    readers_of = [n for n, o in solvers.items() if o.read]
    if not mine.read:
        if solvers and len(readers_of) == len(solvers):
            return Verdict("stricter", mine, solvers, f"read by {', '.join(readers_of)}")
        return Verdict("refused_some_read" if readers_of else "all_refuse", mine, solvers, f"read by {', '.join(readers_of) or 'none'}")
    if distance > 0.0:
        return Verdict("disagree", mine, solvers, f"read differently from the generated model (graph distance {distance:.3g})")
    definite = [o for o in solvers.values() if o.definite]
    if len(definite) >= 2 and all(same_result(o, definite[0]) for o in definite) and not same_result(mine, definite[0]):
        return Verdict("disagree", mine, solvers, CONSENSUS)
    return Verdict("agree", mine, solvers)


# Constructs the solvers read differently from each other and from us, each with the solvers that
# read it otherwise (docs/lp-mps-support.md has the measurements and who sides with us). A
# disagreement is documented when every solver that agrees on the other result is named by one of
# the constructs the file has.
DOCUMENTED = {
    "lp:objective-constant": ("gurobi", "copt"),  # Gurobi drops it; COPT drops one before the first term
    "lp:constant-on-the-left": ("gurobi", "copt", "highs"),  # they drop it: x + y + 1 <= 4 as x + y <= 4
    "lp:header-british-spelling": ("scip", "highs"),  # `Minimise`/`Maximise`: read with no objective
    "lp:no-spaces": ("gurobi", "copt"),  # `3x + 2y`: a variable named `3x`
}


def documented(case: Case, verdict: Verdict) -> str | None:
    """The DOCUMENTED constructs that explain a 'disagree' verdict against the solvers' consensus, or None."""
    if verdict.kind != "disagree" or verdict.detail != CONSENSUS:
        return None
    others = {n for n, o in verdict.solvers.items() if o.definite}
    present = [c for c in DOCUMENTED if c in case.classes]
    if others <= {n for c in present for n in DOCUMENTED[c]}:
        return " + ".join(present)
    return None


# ----------------------------------------------------------------------------- graph distance

# What graph_distance promises, each checked on generated pairs:
#   invariance   d = 0 under renaming, reordering variables, rows and terms, negating a row with
#                its sense flipped, scaling a row by a positive factor, and rounding an integer
#                variable's bounds inwards;
#   symmetry     d(a, b) = d(b, a) exactly;
#   range        0 <= d <= 1;
#   exactness    d = 0 if and only if the models are equal up to those changes (decided here by
#                brute force over variable permutations, independently of graph.py);
#   monotone     the mean distance grows with the number of changes made one after another
#                to the same model (1 to 4).
# So a single changed coefficient, bound, sense or type gives d > 0 except where the changed
# model is equal to the original up to those changes (a one-term row with right-hand side 0
# rescaled; a change that swaps the roles of two interchangeable variables): exactness says which.

PROPERTIES = ("invariance", "symmetry", "range", "exactness", "monotone")


def _r10(x: float) -> float:
    return x if not math.isfinite(x) or x == 0 else float(f"{x:.10g}")


def _vcode(v: Variable) -> tuple:
    """An integer variable's bounds rounded inwards; an integer variable in [0, 1] is a binary."""
    lb, ub = v.lb, v.ub
    if v.vtype != "C":
        lb, ub = (math.ceil(lb) if math.isfinite(lb) else lb), (math.floor(ub) if math.isfinite(ub) else ub)
    vtype = "B" if v.vtype == "I" and (lb, ub) == (0.0, 1.0) else v.vtype
    return (vtype, v.semi, lb, ub, _r10(v.obj))


def _canon_rows(model: Model, rename: dict[str, str]) -> list[tuple]:
    """Each row as '<=' or '=' scaled to max |coefficient| 1, variables renamed; an '=' row in its smaller sign."""
    out = []
    for c in model.constraints:
        sign = -1.0 if c.sense == ">=" else 1.0
        lin = {rename[n]: sign * a for n, a in c.coefs.items() if a != 0}
        quad = {tuple(sorted((rename[a], rename[b]))): sign * q for (a, b), q in c.quad.items() if q != 0}
        rhs = sign * c.rhs
        scale = max([abs(x) for x in [*lin.values(), *quad.values()]], default=abs(rhs) or 1.0)

        def form(s: float) -> tuple:
            return (c.sense == "=", _r10(s * rhs / scale), tuple(sorted((k, _r10(s * a / scale)) for k, a in lin.items())),
                    tuple(sorted((k, _r10(s * a / scale)) for k, a in quad.items())))

        out.append(min(form(1.0), form(-1.0)) if c.sense == "=" else form(1.0))
    return sorted(out)


def equal_up_to_changes(a: Model, b: Model) -> bool:
    """Brute force: some renaming of a's variables onto b's makes the variables, the objective and
    the multiset of canonical rows equal."""
    import itertools

    if (a.n_vars, a.n_cons, a.sense, _r10(a.obj_constant)) != (b.n_vars, b.n_cons, b.sense, _r10(b.obj_constant)):
        return False
    b_vars = {v.name: v for v in b.variables}
    b_rows = _canon_rows(b, {v.name: v.name for v in b.variables})
    b_quad = sorted((tuple(sorted(k)), _r10(q)) for k, q in b.quad_obj.items() if q != 0)
    for perm in itertools.permutations([v.name for v in b.variables]):
        rename = {v.name: p for v, p in zip(a.variables, perm)}
        if any(_vcode(v) != _vcode(b_vars[rename[v.name]]) for v in a.variables):
            continue
        quad = sorted((tuple(sorted((rename[x], rename[y]))), _r10(q)) for (x, y), q in a.quad_obj.items() if q != 0)
        if quad == b_quad and _canon_rows(a, rename) == b_rows:
            return True
    return False


@st.composite
def disguised(draw, model: Model) -> Model:
    """The same model renamed, reordered, with rows negated (sense flipped) and scaled by positive factors."""
    rename = {v.name: n for v, n in zip(model.variables, draw(names(model.n_vars, _SAFE_TAIL)))}
    variables = [Variable(rename[v.name], v.vtype, v.lb, v.ub, v.obj, v.semi) for v in model.variables]
    variables = [variables[i] for i in draw(_perms(len(variables)))]
    flip = {"<=": ">=", ">=": "<=", "=": "="}
    cons = []
    for c in model.constraints:
        factor = (-1.0 if draw(_BOOL) else 1.0) * _pick(draw, [1.0, 2.0, 0.5, 4.0])
        items = list(c.coefs.items())
        coefs = {rename[n]: factor * a for n, a in (items[i] for i in draw(_perms(len(items))))}
        quad = {quad_key(rename[x], rename[y]): factor * q for (x, y), q in c.quad.items()}
        cons.append(Constraint(c.name, coefs, c.sense if factor > 0 else flip[c.sense], factor * c.rhs, quad))
    cons = [cons[i] for i in draw(_perms(len(cons)))]
    quad_obj = {quad_key(rename[x], rename[y]): q for (x, y), q in model.quad_obj.items()}
    return Model(variables, cons, model.sense, model.obj_constant, quad_obj)


CHANGES = ("coefficient", "objective-coefficient", "bound", "sense", "type")


def change(draw, model: Model, what: str) -> Model:
    """A copy of model with one thing changed (what: one of CHANGES; the objective coefficient where
    the model has no row to change)."""
    variables = [Variable(v.name, v.vtype, v.lb, v.ub, v.obj, v.semi) for v in model.variables]
    cons = [Constraint(c.name, dict(c.coefs), c.sense, c.rhs, dict(c.quad)) for c in model.constraints]
    linear = [c for c in cons if c.coefs]
    if what == "coefficient" and linear:
        c = _pick(draw, linear)
        name = _pick(draw, sorted(c.coefs))
        c.coefs[name] = _pick(draw, [x for x in (-3.0, -1.0, 0.5, 1.0, 2.0, 5.0) if x != c.coefs[name]])
    elif what == "sense" and cons:
        c = _pick(draw, cons)
        c.sense = _pick(draw, [s for s in ("<=", ">=", "=") if s != c.sense])
    elif what == "type":
        v = _pick(draw, variables)
        v.vtype = _pick(draw, [t for t in "CI" if t != v.vtype])
    elif what == "bound":
        v = _pick(draw, variables)
        if draw(_BOOL) and math.isfinite(v.ub):
            v.ub = v.ub + _pick(draw, [1.0, 2.5])
        else:
            v.lb = v.lb - _pick(draw, [1.0, 2.5]) if math.isfinite(v.lb) else min(v.ub, 0.0) - 1.0
    else:
        v = _pick(draw, variables)
        v.obj = _pick(draw, [x for x in (-2.0, 0.0, 1.0, 3.0) if x != v.obj])
    return Model(variables, cons, model.sense, model.obj_constant, dict(model.quad_obj))


@dataclass
class GraphCheck:
    """One generated model checked: the properties that failed (empty: all held), and its distances
    to copies with 1, 2, 3 and 4 changes (each copy the previous one with one change more)."""

    failures: list[str]
    distances: list[float]
    equal_after_change: int  # copies that came out equal to the model up to the invariances


@st.composite
def graph_checks(draw) -> GraphCheck:
    """A model, a disguised copy (invariance), and disguised copies with 1..4 changes (symmetry, range, exactness)."""
    from solver_ppo.evaluation import graph_distance

    model = draw(specs()).model()
    failures = []
    if graph_distance(model, draw(disguised(model))) != 0.0:
        failures.append("invariance")
    distances, equal = [], 0
    changed = model
    for _ in range(4):
        changed = change(draw, changed, _pick(draw, CHANGES))
        other = draw(disguised(changed))
        d, back = graph_distance(model, other), graph_distance(other, model)
        if d != back:
            failures.append("symmetry")
        if not 0.0 <= d <= 1.0:
            failures.append("range")
        same = equal_up_to_changes(model, other)
        equal += same
        if (d == 0.0) != same:
            failures.append("exactness")
        distances.append(d)
    return GraphCheck(sorted(set(failures)), distances, equal)


def mean_distance_by_changes(checks: list[GraphCheck]) -> dict[int, float]:
    """The mean distance to the copy with k changes, k = 1..4."""
    return {k + 1: sum(c.distances[k] for c in checks) / len(checks) for k in range(4)} if checks else {}


def monotone(means: dict[int, float]) -> bool:
    """The mean distance grows strictly with the number of changes."""
    values = [means[k] for k in sorted(means)]
    return all(a < b for a, b in zip(values, values[1:]))


# ----------------------------------------------------------------------------- programs

LIBRARIES = ("pyscipopt", "gurobipy", "coptpy", "pyomo", "pulp", "scipy")
IDIOMS = ("loops", "inline", "special")  # loops: solver_ppo.data.code_answers.render_code (data dicts, sums)
_OPS = {"<=": "<=", ">=": ">=", "=": "=="}
# what makes the library write its own LP file, inserted before the solve call
# (an absolute path: coptpy resolves a relative one against the directory the process started in)
_WRITE_LP = {"gurobipy": "m.write({path!r})", "coptpy": "m.write({path!r})", "pyscipopt": "m.writeProblem({path!r})",
             "pulp": "prob.writeLP({path!r})", "pyomo": 'm.write({path!r}, io_options={{"symbolic_solver_labels": True}})'}
_SOLVE_PREFIX = {"gurobipy": "m.optimize(", "coptpy": "m.solve(", "pyscipopt": "m.optimize(", "pulp": "prob.solve(",
                 "pyomo": "result = pyo.SolverFactory("}


def _py(x: float, inf: str = "float('inf')") -> str:
    if math.isinf(x):
        return inf if x > 0 else f"-{inf}"
    return repr(int(x)) if float(x).is_integer() else repr(float(x))


def _sum(coefs: dict[str, float], var: str, constant: float = 0.0) -> str:
    terms = [f"{_py(c)} * {var.format(n=repr(n))}" for n, c in coefs.items()]
    if constant != 0.0 or not terms:
        terms.append(_py(constant))
    return " + ".join(terms)


def _inline(model: Model, library: str) -> list[str]:
    """One statement per variable and per row, each expression written out."""
    obj = {v.name: v.obj for v in model.variables if v.obj != 0.0} or {model.variables[0].name: 0.0}
    if library == "gurobipy":
        vt = {"C": "GRB.CONTINUOUS", "I": "GRB.INTEGER", "B": "GRB.BINARY"}
        out = ["import gurobipy as gp", "from gurobipy import GRB", 'm = gp.Model("fuzz")', "x = {}"]
        out += [f"x[{v.name!r}] = m.addVar(lb={_py(v.lb, 'GRB.INFINITY')}, ub={_py(v.ub, 'GRB.INFINITY')}, vtype={vt[v.vtype]}, name={v.name!r})" for v in model.variables]
        out.append(f"m.setObjective({_sum(obj, 'x[{n}]', model.obj_constant)}, GRB.{model.sense.upper()}IMIZE)")
        out += [f"m.addConstr({_sum(c.coefs, 'x[{n}]')} {_OPS[c.sense]} {_py(c.rhs)}, name={c.name!r})" for c in model.constraints]
        return out + ["m.optimize()"]
    if library == "coptpy":
        vt = {"C": "COPT.CONTINUOUS", "I": "COPT.INTEGER", "B": "COPT.BINARY"}
        out = ["import coptpy as cp", "from coptpy import COPT", "env = cp.Envr()", 'm = env.createModel("fuzz")', "x = {}"]
        out += [f"x[{v.name!r}] = m.addVar(lb={_py(v.lb, 'COPT.INFINITY')}, ub={_py(v.ub, 'COPT.INFINITY')}, vtype={vt[v.vtype]}, name={v.name!r})" for v in model.variables]
        out.append(f"m.setObjective({_sum(obj, 'x[{n}]', model.obj_constant)}, COPT.{model.sense.upper()}IMIZE)")
        out += [f"m.addConstr({_sum(c.coefs, 'x[{n}]')} {_OPS[c.sense]} {_py(c.rhs)}, name={c.name!r})" for c in model.constraints]
        return out + ["m.solve()"]
    if library == "pyscipopt":
        out = ["from pyscipopt import Model", 'm = Model("fuzz")', "x = {}"]
        out += [f"x[{v.name!r}] = m.addVar(name={v.name!r}, vtype={v.vtype!r}, lb={_py(v.lb, 'None').replace('-None', 'None')}, ub={_py(v.ub, 'None')})" for v in model.variables]
        out.append(f"m.setObjective({_sum(obj, 'x[{n}]', model.obj_constant)}, {model.sense + 'imize'!r})")
        out += [f"m.addCons({_sum(c.coefs, 'x[{n}]')} {_OPS[c.sense]} {_py(c.rhs)}, name={c.name!r})" for c in model.constraints]
        return out + ["m.optimize()"]
    if library == "pulp":
        cat = {"C": "'Continuous'", "I": "'Integer'", "B": "'Binary'"}
        out = ["import pulp", f"prob = pulp.LpProblem('fuzz', pulp.Lp{model.sense.capitalize()}imize)", "x = {}"]
        out += [f"x[{v.name!r}] = pulp.LpVariable({v.name!r}, {_py(v.lb, 'None').replace('-None', 'None')}, {_py(v.ub, 'None')}, cat={cat[v.vtype]})" for v in model.variables]
        out.append(f"prob += {_sum(obj, 'x[{n}]', model.obj_constant)}")
        out += [f"prob += {_sum(c.coefs, 'x[{n}]')} {_OPS[c.sense]} {_py(c.rhs)}, {c.name!r}" for c in model.constraints]
        return out + ["prob.solve()"]
    if library == "pyomo":
        dom = {"C": "pyo.Reals", "I": "pyo.Integers", "B": "pyo.Binary"}
        out = ["import pyomo.environ as pyo", "m = pyo.ConcreteModel()", "x = {}"]
        for v in model.variables:
            bounds = "" if v.vtype == "B" else f", bounds=({_py(v.lb, 'None').replace('-None', 'None')}, {_py(v.ub, 'None')})"
            out += [f"x[{v.name!r}] = pyo.Var(domain={dom[v.vtype]}{bounds})", f"m.add_component('v_' + {v.name!r}, x[{v.name!r}])"]
        out.append(f"m.obj = pyo.Objective(expr={_sum(obj, 'x[{n}]', model.obj_constant)}, sense=pyo.{model.sense}imize)")
        out += [f"m.add_component('c{i}', pyo.Constraint(expr={_sum(c.coefs, 'x[{n}]')} {_OPS[c.sense]} {_py(c.rhs)}))" for i, c in enumerate(model.constraints)]
        return out + ['result = pyo.SolverFactory("glpk").solve(m)']
    raise ValueError(library)


def _special(model: Model, library: str) -> list[str]:
    """Each library's own idiom: gurobipy's matrix API, coptpy's LinExpr.addTerms, pyscipopt's
    expression built in place, pulp's LpAffineExpression and LpConstraint, pyomo's Set, Param
    and ConstraintList, scipy's milp with LinearConstraint and Bounds."""
    names_ = [v.name for v in model.variables]
    matrix = [[c.coefs.get(n, 0.0) for n in names_] for c in model.constraints]
    data = [f"names = {names_!r}", f"obj = {[v.obj for v in model.variables]!r}",
            f"rows = {[(c.name, c.coefs, c.sense, c.rhs) for c in model.constraints]!r}"]
    if library == "gurobipy":
        vt = "".join(v.vtype for v in model.variables)
        out = ["import numpy as np", "import gurobipy as gp", "from gurobipy import GRB", *data, 'm = gp.Model("fuzz")',
               f"x = m.addMVar({len(names_)}, lb=np.array({[v.lb for v in model.variables]!r}), ub=np.array({[v.ub for v in model.variables]!r}), vtype={list(vt)!r})",
               f"A = np.array({matrix!r}).reshape({len(matrix)}, {len(names_)})",
               "for i, (name, _, sense, rhs) in enumerate(rows):",
               "    if sense == '<=':", "        m.addConstr(A[i] @ x <= rhs, name=name)",
               "    elif sense == '>=':", "        m.addConstr(A[i] @ x >= rhs, name=name)",
               "    else:", "        m.addConstr(A[i] @ x == rhs, name=name)",
               f"m.setObjective(np.array(obj) @ x + {_py(model.obj_constant)}, GRB.{model.sense.upper()}IMIZE)", "m.optimize()"]
        return [line.replace("inf,", "float('inf'),").replace("inf]", "float('inf')]") for line in out]
    if library == "coptpy":
        vt = {"C": "COPT.CONTINUOUS", "I": "COPT.INTEGER", "B": "COPT.BINARY"}
        return ["import coptpy as cp", "from coptpy import COPT", *data, "env = cp.Envr()", 'm = env.createModel("fuzz")',
                f"lower = {[_py(v.lb, 'COPT.INFINITY') for v in model.variables]}".replace("'", ""),
                f"upper = {[_py(v.ub, 'COPT.INFINITY') for v in model.variables]}".replace("'", ""),
                f"kinds = [{', '.join(vt[v.vtype] for v in model.variables)}]",
                "x = {n: m.addVar(lb=lower[k], ub=upper[k], vtype=kinds[k], name=n) for k, n in enumerate(names)}",
                "for name, coefs, sense, rhs in rows:", "    e = cp.LinExpr()", "    for n, c in coefs.items():",
                "        e.addTerm(x[n], c)",
                "    m.addConstr(e <= rhs if sense == '<=' else (e >= rhs if sense == '>=' else e == rhs), name=name)",
                f"goal = cp.LinExpr({_py(model.obj_constant)})", "for k, n in enumerate(names):", "    goal.addTerm(x[n], obj[k])",
                f"m.setObjective(goal, COPT.{model.sense.upper()}IMIZE)", "m.solve()"]
    if library == "pyscipopt":
        return ["from pyscipopt import Model", *data, 'm = Model("fuzz")',
                f"bounds = {[(None if v.lb == -INF else v.lb, None if v.ub == INF else v.ub, v.vtype) for v in model.variables]!r}",
                "x = {n: m.addVar(name=n, lb=lb, ub=ub, vtype=t) for n, (lb, ub, t) in zip(names, bounds)}",
                "for name, coefs, sense, rhs in rows:", "    e = 0", "    for n, c in coefs.items():", "        e += c * x[n]",
                "    m.addCons(e <= rhs if sense == '<=' else (e >= rhs if sense == '>=' else e == rhs), name=name)",
                f"goal = {_py(model.obj_constant)}", "for k, n in enumerate(names):", "    goal = goal + obj[k] * x[n]",
                f"m.setObjective(goal, {model.sense + 'imize'!r})", "m.optimize()"]
    if library == "pulp":
        return ["import pulp", *data, f"prob = pulp.LpProblem('fuzz', pulp.Lp{model.sense.capitalize()}imize)",
                f"bounds = {[(None if v.lb == -INF else v.lb, None if v.ub == INF else v.ub, {'C': 'Continuous', 'I': 'Integer', 'B': 'Binary'}[v.vtype]) for v in model.variables]!r}",
                "x = {n: pulp.LpVariable(n, lb, ub, cat=t) for n, (lb, ub, t) in zip(names, bounds)}",
                f"prob.setObjective(pulp.LpAffineExpression([(x[n], obj[k]) for k, n in enumerate(names)], constant={_py(model.obj_constant)}))",
                "kinds = {'<=': pulp.LpConstraintLE, '>=': pulp.LpConstraintGE, '=': pulp.LpConstraintEQ}",
                "for name, coefs, sense, rhs in rows:",
                "    prob += pulp.LpConstraint(pulp.LpAffineExpression([(x[n], c) for n, c in coefs.items()]), sense=kinds[sense], rhs=rhs, name=name)",
                "prob.solve()"]
    if library == "pyomo":
        dom = {"C": "pyo.Reals", "I": "pyo.Integers", "B": "pyo.Binary"}
        return ["import pyomo.environ as pyo", *data, "m = pyo.ConcreteModel()", "m.I = pyo.Set(initialize=names, ordered=True)",
                "m.cost = pyo.Param(m.I, initialize=dict(zip(names, obj)))",
                f"spec = {{n: (lb, ub, d) for n, lb, ub, d in zip(names, {[None if v.lb == -INF else v.lb for v in model.variables]!r}, {[None if v.ub == INF else v.ub for v in model.variables]!r}, [{', '.join(dom[v.vtype] for v in model.variables)}])}}",
                "m.x = pyo.Var(m.I, domain=lambda m, n: spec[n][2], bounds=lambda m, n: spec[n][:2])",
                f"m.obj = pyo.Objective(expr=sum(m.cost[n] * m.x[n] for n in m.I) + {_py(model.obj_constant)}, sense=pyo.{model.sense}imize)",
                "m.rows = pyo.ConstraintList()", "for name, coefs, sense, rhs in rows:",
                "    e = sum(c * m.x[n] for n, c in coefs.items())",
                "    m.rows.add(e <= rhs if sense == '<=' else (e >= rhs if sense == '>=' else e == rhs))",
                'result = pyo.SolverFactory("glpk").solve(m)']
    if library == "scipy":
        sign = -1.0 if model.sense == "max" else 1.0
        lo = [-INF if c.sense == "<=" else c.rhs for c in model.constraints]
        hi = [INF if c.sense == ">=" else c.rhs for c in model.constraints]
        out = ["import numpy as np", "from scipy.optimize import milp, LinearConstraint, Bounds",
               f"c = np.array({[sign * v.obj for v in model.variables]!r})",
               f"integrality = np.array({[0 if v.vtype == 'C' else 1 for v in model.variables]!r})",
               f"bounds = Bounds({[v.lb for v in model.variables]!r}, {[v.ub for v in model.variables]!r})"]
        if model.constraints:
            out.append(f"cons = [LinearConstraint(np.array({matrix!r}), {lo!r}, {hi!r})]")
        else:
            out.append("cons = []")
        out.append("res = milp(c, integrality=integrality, bounds=bounds, constraints=cons)")
        return [line.replace("inf,", "np.inf,").replace("inf]", "np.inf]").replace("inf)", "np.inf)") for line in out]
    raise ValueError(library)


def program(model: Model, library: str, idiom: str) -> str:
    """A program that builds the model with the library in the idiom and calls its solve."""
    from solver_ppo.data.code_answers import render_code

    if idiom == "loops":
        return render_code(model, library, "fuzz")
    return "\n".join(_inline(model, library) if idiom == "inline" else _special(model, library)) + "\n"


def with_lp_write(code: str, library: str, path: str) -> str | None:
    """The program with the library's own LP writer writing `path` just before its solve (None: scipy, which has none)."""
    if library not in _WRITE_LP:
        return None
    lines = code.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(_SOLVE_PREFIX[library]))
    return "\n".join(lines[:at] + [_WRITE_LP[library].format(path=path)] + lines[at:]) + "\n"


@st.composite
def program_cases(draw) -> tuple[Model, str, str, str]:
    """(model, library, idiom, code): a linear model (no quadratic terms, no semi-continuous variables)."""
    model = draw(specs(quadratic=False, semi=False)).model()
    library = _pick(draw, LIBRARIES)
    idiom = _pick(draw, IDIOMS if library != "scipy" else ("loops", "special"))  # scipy takes arrays: no inline form
    if library == "scipy":
        model.obj_constant = 0.0  # scipy's objective has no constant
    return model, library, idiom, program(model, library, idiom)


def in_process(code: str, library: str, workdir: str):
    """Capture without the sandbox (the same capture code, in this process): for the test slice."""
    from solver_ppo.evaluation.capture import run_captured

    with quiet():
        return run_captured(code, workdir)


class Sandboxes:
    """Capture through the sandbox, one server per library (it imports the library once)."""

    def __init__(self):
        self.boxes: dict = {}

    def __call__(self, code: str, library: str, workdir: str):
        from solver_ppo.evaluation.sandbox import Sandbox

        box = self.boxes.get(library) or self.boxes.setdefault(library, Sandbox("auto", library=library))
        return box.run(code)

    def close(self) -> None:
        for box in self.boxes.values():
            box.close()


def without_unused_variables(model: Model) -> Model:
    """The model without the variables that neither the objective nor a row uses."""
    used = {n for c in model.constraints for n, a in c.coefs.items() if a != 0.0} | {v.name for v in model.variables if v.obj != 0.0}
    return Model([v for v in model.variables if v.name in used], model.constraints, model.sense, model.obj_constant, model.quad_obj)


def check_program(model: Model, library: str, code: str, capture, readers: Readers, workdir: str) -> tuple[str | None, str]:
    """(why the captured model is not the generated model, or None; how the library's own LP file
    compares with the captured model: 'same model', 'same optimum, another graph', 'optimum
    without the objective constant', 'refused by every reader', or 'differs', which counts as a
    mismatch too)."""
    from solver_ppo.evaluation import ModelReadError, SolverLimits, graph_distance, read_model, solve_model
    from solver_ppo.evaluation.capture import orient, run_captured
    out = capture(code, library, workdir)
    if out.status != "captured":
        return f"not captured: {out.status}: {out.reason}", "none"
    limits = SolverLimits(time_limit_s=10.0)
    got = orient(read_model(out.model_text, out.fmt), model.sense)
    d = graph_distance(got, model)
    if d > 0.0 and library == "pulp" and graph_distance(got, without_unused_variables(model)) == 0.0:
        # pulp's problem is what its objective and rows use: a variable in neither is not part of it
        model = without_unused_variables(model)
        d = 0.0
    if d > 0.0:
        return f"captured model at graph distance {d:.4g}:\n{out.model_text}", "none"
    captured = _outcome(solve_model(got, limits))
    if not same_result(captured, _outcome(solve_model(model, limits))):
        return "captured model solves differently", "none"
    lp = os.path.join(workdir, "m.lp")
    own = with_lp_write(code, library, lp)
    if own is None:
        return None, "none"
    with quiet():
        run_captured(own, workdir)
    with open(lp) as f:
        lp_text = f.read()
    try:
        written = read_model(lp_text, "lp")
    except ModelReadError as err:  # the library wrote what it cannot read back either (coptpy: an objective constant, no rows)
        if any(o.read for o in readers.run(lp).values()):
            return f"the library's own LP file is refused ({err}) but a solver reads it:\n{lp_text}", "differs"
        return None, "refused by every reader"
    finally:
        os.remove(lp)
    if graph_distance(written, got) == 0.0:
        return None, "same model"
    mine = _outcome(solve_model(written, limits))
    if same_result(mine, captured):
        return None, "same optimum, another graph"
    if mine.status == "optimal" and same_result(Outcome("optimal", mine.objective + model.obj_constant), captured):
        return None, "optimum without the objective constant"
    return f"the library's own LP file solves differently:\n{lp_text}\ncaptured:\n{out.model_text}", "differs"


def _outcome(result) -> Outcome:
    return Outcome(result.status, result.objective if result.status == "optimal" else None)
