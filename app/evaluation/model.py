"""The canonical model (linear, with optional quadratic terms) and its readers: LP as people,
LLMs and solver libraries write it, and MPS with the quadratic sections Gurobi, CPLEX, SCIP and
COPT write.

We read LP ourselves instead of through SCIP because SCIP's reader takes `x[0,1]` for the start
of a quadratic term; every reader error names the line it is on. A constraint's name is a label,
not a key: names may repeat, and constraints are identified by their position. The constructs
read and refused are listed in docs/lp-mps-support.md.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

INF = math.inf
_BIG = 1e20  # SCIP's infinity: bounds at or beyond it are infinite


class ModelReadError(ValueError):
    """A model text that cannot be read; `line` is 1-based (None when no single line is to blame)."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.line = line


@dataclass
class Variable:
    name: str
    vtype: str = "C"  # 'C' continuous | 'I' integer | 'B' binary
    lb: float = 0.0
    ub: float = INF
    obj: float = 0.0
    semi: bool = False  # semi-continuous (semi-integer when vtype 'I'): 0, or a value in [lb, ub]


@dataclass
class Constraint:
    """coefs·x + Σ quad[(a, b)]·a·b  (sense)  rhs; quad keys are ordered pairs (a <= b), a square is (a, a)."""

    name: str  # a label: several constraints may share one
    coefs: dict[str, float]
    sense: str  # '<=' | '>=' | '='
    rhs: float
    quad: dict[tuple[str, str], float] = field(default_factory=dict)
    # Where a reader found it, for messages about the text as written (not part of the model):
    # its number among the text's constraints (1-based; both rows of a ranged constraint share it,
    # 0 when not read from text) and its name there (None when the text gives none).
    row: int = field(default=0, compare=False)
    label: str | None = field(default=None, compare=False)


@dataclass
class Model:
    """Objective: Σ v.obj·v + Σ quad_obj[(a, b)]·a·b + obj_constant (quad_obj keyed like Constraint.quad)."""

    variables: list[Variable] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)
    sense: str = "min"  # 'min' | 'max'
    obj_constant: float = 0.0
    quad_obj: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def n_vars(self) -> int:
        return len(self.variables)

    @property
    def n_cons(self) -> int:
        return len(self.constraints)

    @property
    def n_nonzeros(self) -> int:
        """Linear and quadratic coefficients of the constraints, plus the objective's quadratic terms."""
        return sum(len(c.coefs) + len(c.quad) for c in self.constraints) + len(self.quad_obj)

    @property
    def is_quadratic(self) -> bool:
        return bool(self.quad_obj) or any(c.quad for c in self.constraints)

    @property
    def objective_is_constant(self) -> bool:
        """True when no variable appears in the objective: solving it only restates obj_constant."""
        return not any(q != 0.0 for q in self.quad_obj.values()) and not any(v.obj != 0.0 for v in self.variables)


def row_names(model: Model) -> list[str]:
    """Each constraint as its text named it, for messages about the answer: its name where the
    text gives one used by no other constraint, else `row N` (its number in the text); the rows of
    one ranged constraint add which side they are."""
    rows = [c.row or i + 1 for i, c in enumerate(model.constraints)]
    labels = [c.label if c.row else c.name for c in model.constraints]
    rows_of: dict[str, set[int]] = {}
    for label, row in zip(labels, rows):
        if label is not None:
            rows_of.setdefault(label, set()).add(row)
    halves = {row for row, n in Counter(rows).items() if n > 1}
    names = []
    for c, label, row in zip(model.constraints, labels, rows):
        name = label if label is not None and len(rows_of[label]) == 1 else f"row {row}"
        if row in halves:
            name += " (lower side)" if c.sense == ">=" else " (upper side)"
        names.append(name)
    return names


def quad_key(a: str, b: str) -> tuple[str, str]:
    """The canonical key of the product a·b (order-free)."""
    return (a, b) if a <= b else (b, a)


def read_model(text: str, fmt: str | None = None) -> Model:
    """Read LP or MPS text (fmt 'lp' | 'mps' | None to sniff) into a Model; raises ModelReadError."""
    if fmt is None:
        fmt = sniff_format(text)
    if fmt == "lp":
        return _LPReader(text).read()
    if fmt == "mps":
        return _read_mps(text)
    raise ValueError(f"unknown model format {fmt!r}; use 'lp', 'mps' or None")


def sniff_format(text: str) -> str:
    """'mps' when the first meaningful line is an MPS section header, else 'lp'."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("*", "\\")):
            continue
        head = line.split()[0].upper()
        return "mps" if head in ("NAME", "ROWS", "OBJSENSE", "OBJSENSE:") else "lp"
    return "lp"


# ----------------------------------------------------------------------------- LP

# Section headers, tried in this order. A "refuse" entry names a construct the evaluator does not
# represent (not every solver reads it either: docs/lp-mps-support.md); reading stops there with
# that name, what to write instead, and the line.
_SECTIONS = [
    ("refuse:multiple objectives (Gurobi's 'multi-objectives' section) are not supported; write one objective", r"(?:maximi[sz]e|minimi[sz]e|max|min)\s+multi-objectives?"),
    ("max", r"maximi[sz]e|maximum|max"),
    ("min", r"minimi[sz]e|minimum|min"),
    ("st", r"subject\s+to|such\s+that|s\.\s*t\.?|st\.?"),
    ("lazy", r"lazy\s+constraints?"),  # constraints that a solver may add late: part of the model
    ("cuts", r"user\s+cuts?"),  # cuts the writer states are valid: reading them as rows keeps the optimum
    ("bounds", r"bounds?"),
    ("refuse:general constraints (section 'General Constraints': min/max/abs/and/or/norm/piecewise/function) are not supported; write them with linear constraints and integer variables", r"general\s+constraints?|genconstrs?"),
    ("general", r"generals?|integers?|gen"),
    ("binary", r"binary|binaries|bin"),
    ("semi", r"semi-continuous|semis|semi"),
    ("refuse:special ordered sets (section 'SOS') are not supported; write them with binary variables", r"sos[12]?"),
    ("refuse:a piecewise-linear objective (section 'PWLObj') is not supported; write it with linear constraints", r"pwlobj"),
    ("end", r"end"),
]
# A header may carry content (`Maximize 3 x + y`), but `st + x <= 2` is a constraint, not a header.
_SECTION_RE = [
    (key, re.compile(rf"^(?:{pat})(?=$|\s|:)(?!\s*[<>=*^{'' if key in ('max', 'min') else '+-'}])\s*:?\s*(.*)$", re.I))
    for key, pat in _SECTIONS
]

_NUMBER = r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_NAME = r"[A-Za-z_!\"#$%&/,;?@'{}|~][A-Za-z0-9_!\"#$%&/,.;?@'{}|~\[\]()]*"
_TOKEN = re.compile(
    rf"\s*(?:(?P<num>{_NUMBER})|(?P<inf>[+-]?inf(?:inity)?\b)|(?P<slash>/)(?=\s*[\d.])|(?P<name>{_NAME})|(?P<arrow>->)"
    rf"|(?P<sense><=|=<|>=|=>|<|>|=)|(?P<op>[+\-])|(?P<colon>:)|(?P<star>\*)|(?P<caret>\^)|(?P<bracket>\[)|(?P<close>\])|(?P<other>\S))",
    re.I,
)
_SENSE = {"<=": "<=", "=<": "<=", "<": "<=", ">=": ">=", "=>": ">=", ">": ">=", "=": "="}
_FLIP = {"<=": ">=", ">=": "<=", "=": "="}


@dataclass
class _Tok:
    kind: str
    text: str
    line: int


@dataclass
class _Side:
    """One side of a constraint, or the objective: linear, quadratic and constant parts."""

    coefs: dict[str, float]
    quad: dict[tuple[str, str], float]
    const: float

    @property
    def has_vars(self) -> bool:
        return bool(self.coefs or self.quad)


def _tokenize(text: str, line: int) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:  # only trailing whitespace left
            break
        pos = m.end()
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "name" and value.endswith("]") and value.count("]") > value.count("["):
            # `[x*y]`: the closing bracket is not part of the name `y`
            closers = min(len(value) - len(value.rstrip("]")), value.count("]") - value.count("["))
            toks.append(_Tok(kind, value[: len(value) - closers], line))
            toks.extend(_Tok("close", "]", line) for _ in range(closers))
            continue
        toks.append(_Tok(kind, value, line))
    return toks


class _LPReader:
    def __init__(self, text: str):
        self.text = text
        self.vars: dict[str, Variable] = {}
        self.model = Model()
        self.rows = 0  # constraints read so far, as written (a ranged one counts once)

    def var(self, name: str) -> Variable:
        v = self.vars.get(name)
        if v is None:
            v = self.vars[name] = Variable(name)
            self.model.variables.append(v)
        return v

    def read(self) -> Model:
        # Split into sections; each section keeps its tokens with their line numbers.
        sections: list[tuple[str, int, list[_Tok]]] = []
        for lineno, raw in enumerate(self.text.splitlines(), start=1):
            line = raw.split("\\", 1)[0].strip()
            if not line:
                continue
            header = next(((key, m) for key, rx in _SECTION_RE if (m := rx.match(line))), None)
            if header is not None:
                key, m = header
                if key == "end":
                    break
                if key.startswith("refuse:"):
                    raise ModelReadError(key[7:], lineno)
                sections.append((key, lineno, []))
                line = m.group(1)
            if line:
                if not sections:
                    raise ModelReadError(f"expected 'Maximize' or 'Minimize' before {line[:40]!r}", lineno)
                sections[-1][2].extend(_tokenize(line, lineno))
        if not sections or sections[0][0] not in ("max", "min"):
            raise ModelReadError("no objective section: an LP starts with 'Maximize' or 'Minimize'", sections[0][1] if sections else None)
        seen: set[str] = set()
        for key, lineno, toks in sections:
            group = "obj" if key in ("max", "min") else key
            if group in seen and group in ("obj", "bounds"):
                raise ModelReadError(f"second '{group}' section", lineno)
            seen.add(group)
            if group == "obj":
                self.model.sense = key
                self._objective(toks)
            elif key in ("st", "lazy", "cuts"):
                self._constraints(toks)
            elif key == "bounds":
                self._bounds(toks)
            elif key in ("general", "binary"):
                self._types(toks, "I" if key == "general" else "B")
            elif key == "semi":
                self._semi(toks)
        return self.model

    # An expression: signed terms `[+-] [coef] [*] name`, `[coef] a * b`, `[coef] a ^ 2`, `[ ... ] [/ d]`
    # or `[+-] constant`; stops at a sense, a label `name :`, or (stop_line) the end of that line.
    def _expression(self, toks: list[_Tok], i: int, stop_line: int | None) -> tuple[_Side, int]:
        side = _Side({}, {}, 0.0)
        first = True
        while i < len(toks):
            t = toks[i]
            if t.kind in ("sense", "colon", "close"):
                break
            if t.kind == "arrow":
                raise ModelReadError("indicator constraints ('->') are not supported; write them with a binary variable and linear constraints", t.line)
            if stop_line is not None and t.line != stop_line:
                break
            # A new labelled constraint starts here: `name :`.
            if t.kind == "name" and i + 1 < len(toks) and toks[i + 1].kind == "colon":
                break
            sign = 1.0
            if t.kind == "op":
                sign = -1.0 if t.text == "-" else 1.0
                i += 1
                while i < len(toks) and toks[i].kind == "op":  # `+ -3` or `- -x`
                    sign *= -1.0 if toks[i].text == "-" else 1.0
                    i += 1
                if i >= len(toks):
                    raise ModelReadError(f"expression ends with '{t.text}'", t.line)
            elif not first:
                break  # two terms without an operator between them: the next constraint begins
            first = False
            t = toks[i]
            if t.kind == "bracket":
                i = self._bracket(toks, i, sign, side)
                continue
            coef = 1.0
            has_num = False
            if t.kind in ("num", "inf"):
                coef = _number(t.text)
                has_num = True
                i += 1
                if i < len(toks) and toks[i].kind == "star":
                    i += 1
                    if i >= len(toks) or toks[i].kind != "name":
                        raise ModelReadError("'*' must be followed by a variable name", t.line)
            if i < len(toks) and toks[i].kind == "name" and (stop_line is None or toks[i].line == t.line or not has_num):
                if i + 1 < len(toks) and toks[i + 1].kind == "colon":
                    if has_num:
                        raise ModelReadError(f"number before the label '{toks[i].text}:'", toks[i].line)
                    break
                name = toks[i].text
                i += 1
                if not math.isfinite(coef):
                    raise ModelReadError(f"infinite coefficient for '{name}'", t.line)
                self.var(name)
                if i < len(toks) and toks[i].kind in ("caret", "star"):
                    other, i = self._second_factor(toks, i, name)
                    key = quad_key(name, other)
                    side.quad[key] = side.quad.get(key, 0.0) + sign * coef
                else:
                    side.coefs[name] = side.coefs.get(name, 0.0) + sign * coef
            elif has_num:
                side.const += sign * coef
            else:
                raise ModelReadError(_unexpected(toks[i]), toks[i].line)
        return side, i

    def _second_factor(self, toks: list[_Tok], i: int, name: str) -> tuple[str, int]:
        """After `name` at a '^' or '*': the other factor of a square or product, and the next index."""
        op = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if op.kind == "caret":
            if nxt is None or nxt.kind != "num" or float(nxt.text) != 2.0:
                raise ModelReadError(f"power '{name} ^ {nxt.text if nxt else ''}' is not supported (only squares, '^ 2')", op.line)
            other = name
        else:
            if nxt is None or nxt.kind != "name":
                raise ModelReadError(f"'*' after '{name}' must be followed by a variable name", op.line)
            other = nxt.text
            self.var(other)
        i += 2
        if i < len(toks) and toks[i].kind in ("caret", "star"):
            raise ModelReadError(f"a term of degree above 2 at '{name} {op.text} {nxt.text} {toks[i].text}' is not supported (quadratic terms only)", toks[i].line)
        return other, i

    def _bracket(self, toks: list[_Tok], i: int, sign: float, side: _Side) -> int:
        """`[ terms ]` with an optional `/ divisor` (the objective's `/ 2`), added into side."""
        open_ = toks[i]
        inner, j = self._expression(toks, i + 1, None)
        if j >= len(toks) or toks[j].kind != "close":
            bad = toks[j] if j < len(toks) else open_
            raise ModelReadError(f"'[' without its closing ']' (at {bad.text!r})", bad.line)
        i = j + 1
        divisor = 1.0
        if i < len(toks) and toks[i].kind == "slash":
            if i + 1 >= len(toks) or toks[i + 1].kind != "num" or float(toks[i + 1].text) == 0.0:
                raise ModelReadError("'/' after ']' must be followed by a nonzero number", toks[i].line)
            divisor = float(toks[i + 1].text)
            i += 2
        factor = sign / divisor
        for name, c in inner.coefs.items():
            side.coefs[name] = side.coefs.get(name, 0.0) + factor * c
        for key, c in inner.quad.items():
            side.quad[key] = side.quad.get(key, 0.0) + factor * c
        side.const += factor * inner.const
        return i

    def _objective(self, toks: list[_Tok]) -> None:
        i = 0
        if len(toks) >= 2 and toks[0].kind == "name" and (toks[1].kind == "colon" or toks[1].text == "="):
            i = 2  # `obj: ...` or `Z = ...`
        side, i = self._expression(toks, i, None)
        if i < len(toks):
            raise ModelReadError(_unexpected(toks[i]) + " in the objective", toks[i].line)
        for name, c in side.coefs.items():
            self.vars[name].obj = c
        self.model.quad_obj = {k: c for k, c in side.quad.items() if c != 0.0}
        self.model.obj_constant = side.const

    def _constraints(self, toks: list[_Tok]) -> None:
        i = 0
        while i < len(toks):
            start = toks[i]
            name = None
            if start.kind == "name" and i + 1 < len(toks) and toks[i + 1].kind == "colon":
                name = start.text
                i += 2
            sides: list[_Side] = []
            senses: list[str] = []
            side, i = self._expression(toks, i, None)
            sides.append(side)
            while i < len(toks) and toks[i].kind == "sense":
                senses.append(_SENSE[toks[i].text])
                sense_line = toks[i].line
                i += 1
                if i >= len(toks):
                    raise ModelReadError(f"constraint ends after '{toks[i - 1].text}' without a right-hand side", sense_line)
                # the side after a sense ends with its line, so an unlabelled `-x + y >= 2` on the
                # next line starts a new constraint rather than continuing this one
                before = i
                side, i = self._expression(toks, i, toks[i].line)
                if i == before:
                    raise ModelReadError(f"{_unexpected(toks[i])} after '{toks[i - 1].text}' (expected a number or expression)", toks[i].line)
                sides.append(side)
            if not senses:
                bad = toks[i] if i < len(toks) else start
                raise ModelReadError(f"constraint without '<=', '>=' or '=' (at {bad.text!r})", bad.line)
            if i < len(toks) and toks[i].kind not in ("name", "op", "num", "inf", "bracket"):
                raise ModelReadError(_unexpected(toks[i]), toks[i].line)
            label = name or f"R{len(self.model.constraints) + 1}"
            self.rows += 1
            if len(senses) == 1:
                self._add_row(label, sides[0], senses[0], sides[1], name)
            elif len(senses) == 2 and senses[0] == senses[1] != "=" and not sides[0].has_vars and not sides[2].has_vars:
                # ranged row `lo <= expr <= hi`: two rows
                self._add_row(f"{label}_lo", sides[0], senses[0], sides[1], name)
                self._add_row(f"{label}_hi", sides[1], senses[1], sides[2], name)
            else:
                raise ModelReadError("a chained constraint must read 'constant <= expression <= constant'", start.line)

    def _add_row(self, name: str, left: _Side, sense: str, right: _Side, label: str | None) -> None:
        if not left.has_vars and right.has_vars:  # `3 <= y + 2 z` reads as `y + 2 z >= 3`
            left, right, sense = right, left, _FLIP[sense]
        coefs = dict(left.coefs)
        for v, c in right.coefs.items():
            coefs[v] = coefs.get(v, 0.0) - c
        quad = dict(left.quad)
        for k, c in right.quad.items():
            quad[k] = quad.get(k, 0.0) - c
        coefs = {v: c for v, c in coefs.items() if c != 0.0}
        quad = {k: c for k, c in quad.items() if c != 0.0}
        self.model.constraints.append(Constraint(name, coefs, sense, right.const - left.const, quad, self.rows, label))

    def _bounds(self, toks: list[_Tok]) -> None:
        lines: dict[int, list[_Tok]] = {}
        for t in toks:
            lines.setdefault(t.line, []).append(t)
        for lineno, ts in lines.items():
            kinds = [t.kind for t in ts]
            if kinds == ["name", "name"] and ts[1].text.lower() == "free":
                v = self.var(ts[0].text)
                v.lb, v.ub = -INF, INF
                continue
            # forms: name S num | num S name | num S name S num (signs attach to numbers)
            items = _signed_numbers(ts, lineno)
            if [k for k, _ in items] == ["name", "sense", "num"]:
                self._bound(items[0][1], items[1][1], items[2][1], lineno)
            elif [k for k, _ in items] == ["num", "sense", "name"]:
                self._bound(items[2][1], _FLIP[items[1][1]], items[0][1], lineno)
            elif [k for k, _ in items] == ["num", "sense", "name", "sense", "num"]:
                self._bound(items[2][1], _FLIP[items[1][1]], items[0][1], lineno)
                self._bound(items[2][1], items[3][1], items[4][1], lineno)
            else:
                text = " ".join(t.text for t in ts)
                raise ModelReadError(f"cannot read the bound {text!r} (expected 'x <= 5', '-inf <= x <= 3', 'x free')", lineno)

    def _bound(self, name: str, sense: str, value: float, lineno: int) -> None:
        v = self.var(name)
        if sense in ("<=", "="):
            v.ub = value
        if sense in (">=", "="):
            v.lb = value
        if v.lb == INF or v.ub == -INF:
            raise ModelReadError(f"bound of '{name}' is infinite on the wrong side", lineno)

    def _types(self, toks: list[_Tok], vtype: str) -> None:
        for t in toks:
            if t.kind != "name":
                raise ModelReadError(_unexpected(t) + " in a General/Binary section (expected variable names)", t.line)
            v = self.var(t.text)
            v.vtype = vtype
            if vtype == "B":
                v.lb, v.ub = max(v.lb, 0.0), min(v.ub, 1.0)


    def _semi(self, toks: list[_Tok]) -> None:
        for t in toks:
            if t.kind != "name":
                raise ModelReadError(_unexpected(t) + " in a Semi-continuous section (expected variable names)", t.line)
            self.var(t.text).semi = True


def _signed_numbers(ts: list[_Tok], lineno: int) -> list[tuple[str, object]]:
    """Bound-line tokens as (kind, value): numbers with their signs folded in, senses normalized."""
    out: list[tuple[str, object]] = []
    sign = 1.0
    for t in ts:
        if t.kind == "op":
            sign *= -1.0 if t.text == "-" else 1.0
        elif t.kind in ("num", "inf"):
            out.append(("num", sign * _number(t.text)))
            sign = 1.0
        elif t.kind == "name":
            out.append(("name", t.text))
        elif t.kind == "sense":
            out.append(("sense", _SENSE[t.text]))
        else:
            raise ModelReadError(_unexpected(t) + " in Bounds", lineno)
    return out


def _number(text: str) -> float:
    value = float(text)  # accepts 'inf', '-infinity', '1e5'
    return math.copysign(INF, value) if abs(value) >= _BIG else value


def _unexpected(t: _Tok) -> str:
    return f"unexpected {t.text!r}"


# ----------------------------------------------------------------------------- MPS

_MPS_SECTIONS = {"NAME", "ROWS", "COLUMNS", "RHS", "RANGES", "BOUNDS", "ENDATA", "OBJSENSE", "OBJSENS", "QUADOBJ", "QMATRIX", "QSECTION", "QCMATRIX"}
_MPS_REFUSED = {  # section -> what it holds (docs/lp-mps-support.md)
    "SOS": "special ordered sets (section SOS)",
    "SETS": "special ordered sets (section SETS)",
    "INDICATORS": "indicator constraints (section INDICATORS)",
    "GENCONS": "general constraints (section GENCONS)",
    "PWLOBJ": "piecewise-linear objectives (section PWLOBJ)",
    "CSECTION": "cone constraints (section CSECTION)",
}
# Per quadratic section: the multiplier of an entry (i, j, v) into the coefficient of the product
# i·j. QMATRIX/QSECTION list the full symmetric Q of ½ x'Qx (both triangles); QUADOBJ only its upper
# triangle (an off-diagonal entry stands for Q_ij = Q_ji = v); QCMATRIX the full Q of x'Qx.
_Q_FACTOR = {"QMATRIX": (0.5, 0.5), "QSECTION": (0.5, 0.5), "QUADOBJ": (0.5, 1.0), "QCMATRIX": (1.0, 1.0)}  # (diagonal, off-diagonal)
_FIXED_FIELDS = [(1, 3), (4, 12), (14, 22), (24, 36), (39, 47), (49, 61)]


def _mps_fields(line: str, want: set[int]) -> list[str]:
    fields = line.split()
    if len(fields) in want:
        return fields
    # Fixed MPS allows spaces inside names: fall back to the fixed columns.
    fixed = [line[a:b].strip() for a, b in _FIXED_FIELDS]
    return [f for f in fixed if f]


def _read_mps(text: str) -> Model:
    model = Model()
    vars_: dict[str, Variable] = {}
    rows: dict[str, tuple[str, Constraint | None]] = {}  # name -> (type N/L/G/E, row)
    row_line: dict[str, int] = {}
    obj_row: str | None = None
    ranges: dict[str, float] = {}
    section = None
    q_row: Constraint | None = None  # the row of the current QCMATRIX section
    integer = False
    bounded: set[str] = set()  # columns with a BOUNDS entry
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("*"):
            continue
        if not raw[0].isspace():
            head = raw.split()
            section = head[0].upper().rstrip(":")
            if section in _MPS_REFUSED:
                raise ModelReadError(f"{_MPS_REFUSED[section]} are not supported; write them with linear constraints and integer variables", lineno)
            if section not in _MPS_SECTIONS:
                raise ModelReadError(f"unknown MPS section {head[0]!r}", lineno)
            if section.startswith("OBJSENS") and len(head) > 1:
                model.sense = _mps_sense(head[1], lineno)
            if section == "QSECTION" and len(head) > 1 and head[1] != obj_row:
                raise ModelReadError(f"QSECTION for the row {head[1]!r} is not supported (write a quadratic row as QCMATRIX)", lineno)
            if section == "QCMATRIX":
                if len(head) != 2:
                    raise ModelReadError("QCMATRIX needs the name of its row on the same line", lineno)
                kind, q_row = _mps_row(rows, head[1], lineno)
                if kind == "N":
                    raise ModelReadError(f"QCMATRIX for the objective row {head[1]!r} (use QUADOBJ or QMATRIX)", lineno)
            if section == "ENDATA":
                break
            continue
        try:
            if section is None or section == "NAME":
                raise ModelReadError(f"data line outside a section: {raw.strip()[:40]!r}", lineno)
            if section.startswith("OBJSENS"):
                model.sense = _mps_sense(raw.strip(), lineno)
            elif section == "ROWS":
                kind, name = _mps_fields(raw, {2})[:2]
                kind = kind.upper()
                if name in rows:
                    # COLUMNS, RHS and RANGES address rows by name: a repeated one makes them ambiguous (SCIP and COPT refuse too)
                    raise ModelReadError(f"row name {name!r} is used twice in ROWS (first on line {row_line[name]}); MPS addresses rows by name, so give each row its own", lineno)
                row_line[name] = lineno
                if kind == "N":
                    if obj_row is None:
                        obj_row = name
                    rows[name] = ("N", None)
                elif kind in ("L", "G", "E"):
                    con = Constraint(name, {}, {"L": "<=", "G": ">=", "E": "="}[kind], 0.0, row=len(model.constraints) + 1, label=name)
                    rows[name] = (kind, con)
                    model.constraints.append(con)
                else:
                    raise ModelReadError(f"row type {kind!r} is not N, L, G or E", lineno)
            elif section == "COLUMNS":
                f = _mps_fields(raw, {3, 5})
                if len(f) >= 3 and f[1].strip("'").upper() == "MARKER":
                    marker = f[2].strip("'").upper()
                    integer = {"INTORG": True, "INTEND": False}.get(marker, integer)
                    continue
                if len(f) not in (3, 5):
                    raise ModelReadError(f"COLUMNS line needs a column name and 1 or 2 (row, value) pairs, got {len(f)} fields", lineno)
                col = f[0]
                v = vars_.get(col)
                if v is None:
                    v = vars_[col] = Variable(col, "I" if integer else "C")
                    model.variables.append(v)
                for row, val in zip(f[1::2], f[2::2]):
                    value = _mps_number(val, lineno)
                    kind, con = _mps_row(rows, row, lineno)
                    if kind == "N":
                        if row == obj_row:
                            v.obj += value
                    elif value != 0.0:
                        con.coefs[col] = con.coefs.get(col, 0.0) + value
            elif section in ("RHS", "RANGES"):
                f = _mps_fields(raw, {2, 3, 4, 5})
                pairs = f[1:] if len(f) % 2 == 1 else f  # the set name is optional
                for row, val in zip(pairs[0::2], pairs[1::2]):
                    value = _mps_number(val, lineno)
                    kind, con = _mps_row(rows, row, lineno)
                    if section == "RANGES":
                        if kind == "N":
                            raise ModelReadError(f"RANGES on the objective row {row!r}", lineno)
                        ranges[row] = value
                    elif kind == "N":
                        if row == obj_row:
                            model.obj_constant = -value  # MPS convention: RHS of the objective is minus its constant
                    else:
                        con.rhs = value
            elif section == "BOUNDS":
                f = _mps_fields(raw, {3, 4})
                kind = f[0].upper()
                if kind in ("FR", "MI", "PL", "BV") or (kind in ("SC", "SI") and (len(f) == 2 or (len(f) == 3 and not _is_number(f[2])))):
                    col, value = (f[1] if len(f) == 2 else f[2]), None  # `FR [set] col` (BV may carry a value, SC may omit it)
                elif len(f) in (3, 4):  # `UP [set] col value`
                    col, value = f[-2], _mps_number(f[-1], lineno)
                else:
                    raise ModelReadError(f"bound {kind} needs a column and a value", lineno)
                if col not in vars_:
                    raise ModelReadError(f"bound on unknown column {col!r}", lineno)
                _mps_bound(vars_[col], kind, value, lineno)
                bounded.add(col)
            elif section in _Q_FACTOR:
                f = _mps_fields(raw, {3})
                if len(f) != 3:
                    raise ModelReadError(f"{section} line needs two column names and a value, got {len(f)} fields", lineno)
                for col in f[:2]:
                    if col not in vars_:
                        raise ModelReadError(f"{section} uses column {col!r}, which COLUMNS does not define", lineno)
                value = _mps_number(f[2], lineno) * _Q_FACTOR[section][f[0] != f[1]]
                terms = q_row.quad if section == "QCMATRIX" else model.quad_obj
                key = quad_key(f[0], f[1])
                terms[key] = terms.get(key, 0.0) + value
            else:
                raise ModelReadError(f"data line in section {section}", lineno)
        except (ValueError, IndexError) as err:
            if isinstance(err, ModelReadError):
                raise
            raise ModelReadError(f"cannot read MPS line {raw.strip()[:60]!r}", lineno) from None
    if section != "ENDATA":
        raise ModelReadError("MPS text ends without ENDATA")
    model.quad_obj = {k: c for k, c in model.quad_obj.items() if c != 0.0}
    for con in model.constraints:
        if con.quad:
            con.quad = {k: c for k, c in con.quad.items() if c != 0.0}
    for v in model.variables:
        if v.vtype == "I" and v.name not in bounded and not v.semi:
            v.ub = 1.0  # an integer column of a MARKER block with no BOUNDS entry is binary (SCIP, Gurobi, COPT, HiGHS)
    for name, r in ranges.items():
        con = rows[name][1]
        lo, hi = _range(con.sense, con.rhs, r)
        # a ranged row becomes two rows
        con.sense, con.rhs = ">=", lo
        model.constraints.append(Constraint(f"{name}_range", dict(con.coefs), "<=", hi, dict(con.quad), con.row, con.label))
    return model


def _mps_sense(word: str, lineno: int) -> str:
    w = word.upper()
    if w in ("MAX", "MAXIMIZE", "MAXIMISE"):
        return "max"
    if w in ("MIN", "MINIMIZE", "MINIMISE"):
        return "min"
    raise ModelReadError(f"OBJSENSE must be MAX or MIN, got {word!r}", lineno)


def _mps_row(rows: dict, row: str, lineno: int):
    if row not in rows:
        raise ModelReadError(f"unknown row {row!r}", lineno)
    return rows[row]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _mps_number(text: str, lineno: int) -> float:
    try:
        value = _number(text)
    except ValueError:
        raise ModelReadError(f"{text!r} is not a number", lineno) from None
    if math.isnan(value):
        raise ModelReadError("NaN value", lineno)
    return value


def _mps_bound(v: Variable, kind: str, value: float | None, lineno: int) -> None:
    if kind == "UP":
        if value < 0 and v.lb == 0.0:
            v.lb = -INF  # the MPS convention SCIP follows
        v.ub = value
    elif kind == "LO":
        v.lb = value
    elif kind == "FX":
        v.lb = v.ub = value
    elif kind == "FR":
        v.lb, v.ub = -INF, INF
    elif kind == "MI":
        v.lb = -INF
    elif kind == "PL":
        v.ub = INF
    elif kind == "BV":
        v.vtype, v.lb, v.ub = "B", 0.0, 1.0
    elif kind in ("LI", "UI"):
        v.vtype = "I"
        if kind == "LI":
            v.lb = value
        else:
            v.ub = value
    elif kind in ("SC", "SI"):  # semi-continuous (SI: semi-integer); the value, when given, is the upper bound
        v.semi = True
        v.vtype = "I" if kind == "SI" else v.vtype
        if value is not None:
            v.ub = value
    else:
        raise ModelReadError(f"bound type {kind!r} is not supported", lineno)


def _range(sense: str, rhs: float, r: float) -> tuple[float, float]:
    if sense == "<=":
        return rhs - abs(r), rhs
    if sense == ">=":
        return rhs, rhs + abs(r)
    return (rhs, rhs + r) if r >= 0 else (rhs + r, rhs)


# ----------------------------------------------------------------------------- writer


def to_lp_text(model: Model) -> str:
    """LP text that `read_model` reads back to an equal model (names must be LP names)."""
    for v in model.variables:
        if not re.fullmatch(_NAME, v.name) or v.name.lower() in ("free", "inf", "infinity"):
            raise ValueError(f"variable name {v.name!r} cannot be written in LP format")

    def expr(coefs: dict[str, float], quad: dict[tuple[str, str], float] | None = None, halve: bool = False) -> str:
        parts = [f"{'-' if c < 0 else '+'} {_fmt(abs(c))} {n}" for n, c in coefs.items()]
        if quad:  # the objective's bracket is halved (`[ ... ] / 2`), so its terms are written doubled
            terms = [f"{'-' if c < 0 else '+'} {_fmt(abs(c) * (2 if halve else 1))} {a} {'^ 2' if a == b else '* ' + b}" for (a, b), c in quad.items()]
            inner = " ".join(terms)
            parts.append(f"+ [ {inner[2:] if inner.startswith('+ ') else inner} ]{' / 2' if halve else ''}")
        text = " ".join(parts)
        return text[2:] if text.startswith("+ ") else text

    lines = ["Maximize" if model.sense == "max" else "Minimize"]
    obj = expr({v.name: v.obj for v in model.variables}, model.quad_obj, halve=True)  # every variable, so the order reads back the same
    if model.obj_constant != 0.0:
        obj = f"{obj} {'-' if model.obj_constant < 0 else '+'} {_fmt(abs(model.obj_constant))}".strip()
    lines.append(f" obj: {obj}")
    lines.append("Subject To")
    for c in model.constraints:
        lines.append(f" {c.name}: {expr(c.coefs, c.quad) or '0'} {c.sense} {_fmt(c.rhs)}")
    lines.append("Bounds")
    for v in model.variables:
        default = (0.0, 1.0) if v.vtype == "B" else (0.0, INF)
        if (v.lb, v.ub) != default:
            lines.append(f" {v.name} free" if (v.lb, v.ub) == (-INF, INF) else f" {_fmt(v.lb)} <= {v.name} <= {_fmt(v.ub)}")
    for section, names in (
        ("Generals", [v.name for v in model.variables if v.vtype == "I"]),
        ("Binaries", [v.name for v in model.variables if v.vtype == "B"]),
        ("Semi-continuous", [v.name for v in model.variables if v.semi]),
    ):
        if names:
            lines.append(section)
            lines.extend(f" {n}" for n in names)
    lines.append("End")
    return "\n".join(lines) + "\n"


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(x))
