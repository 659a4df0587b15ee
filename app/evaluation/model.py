"""The canonical linear model and its readers (LP as people, LLMs and gurobipy write it; MPS).

We read LP ourselves instead of through SCIP because SCIP's reader takes `x[0,1]` for the start
of a quadratic term; every reader error names the line it is on.
"""

from __future__ import annotations

import math
import re
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


@dataclass
class Constraint:
    name: str
    coefs: dict[str, float]
    sense: str  # '<=' | '>=' | '='
    rhs: float


@dataclass
class Model:
    variables: list[Variable] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)
    sense: str = "min"  # 'min' | 'max'
    obj_constant: float = 0.0

    @property
    def n_vars(self) -> int:
        return len(self.variables)

    @property
    def n_cons(self) -> int:
        return len(self.constraints)

    @property
    def n_nonzeros(self) -> int:
        return sum(len(c.coefs) for c in self.constraints)


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

_SECTIONS = [
    ("max", r"maximi[sz]e|maximum|max"),
    ("min", r"minimi[sz]e|minimum|min"),
    ("st", r"subject\s+to|such\s+that|s\.\s*t\.?|st\.?"),
    ("bounds", r"bounds?"),
    ("general", r"generals?|integers?|gen"),
    ("binary", r"binary|binaries|bin"),
    ("unsupported", r"semi-continuous|semi|semis|sos"),
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
    rf"\s*(?:(?P<num>{_NUMBER})|(?P<inf>[+-]?inf(?:inity)?\b)|(?P<name>{_NAME})|(?P<sense><=|=<|>=|=>|<|>|=)"
    rf"|(?P<op>[+\-])|(?P<colon>:)|(?P<star>\*)|(?P<caret>\^)|(?P<bracket>\[)|(?P<other>\S))",
    re.I,
)
_SENSE = {"<=": "<=", "=<": "<=", "<": "<=", ">=": ">=", "=>": ">=", ">": ">=", "=": "="}


@dataclass
class _Tok:
    kind: str
    text: str
    line: int


def _tokenize(text: str, line: int) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:  # only trailing whitespace left
            break
        pos = m.end()
        kind = m.lastgroup
        toks.append(_Tok(kind, m.group(kind), line))
    return toks


class _LPReader:
    def __init__(self, text: str):
        self.text = text
        self.vars: dict[str, Variable] = {}
        self.model = Model()

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
                if key == "unsupported":
                    raise ModelReadError(f"section '{line.split()[0]}' (semi-continuous/SOS) is not supported", lineno)
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
            if group in seen and group in ("obj", "st", "bounds"):
                raise ModelReadError(f"second '{group}' section", lineno)
            seen.add(group)
            if group == "obj":
                self.model.sense = key
                self._objective(toks, lineno)
            elif key == "st":
                self._constraints(toks)
            elif key == "bounds":
                self._bounds(toks)
            elif key in ("general", "binary"):
                self._types(toks, "I" if key == "general" else "B")
        return self.model

    # An expression: signed terms `[+-] [coef] [*] name` or `[+-] constant`; returns (coefs, constant).
    def _expression(self, toks: list[_Tok], i: int, stop_line: int | None) -> tuple[dict[str, float], float, int]:
        coefs: dict[str, float] = {}
        const = 0.0
        first = True
        while i < len(toks):
            t = toks[i]
            if t.kind in ("sense", "colon"):
                break
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
                if i < len(toks) and toks[i].kind in ("caret", "star"):
                    raise ModelReadError(f"quadratic term at '{name}{toks[i].text}' is not supported (linear models only)", toks[i].line)
                if not math.isfinite(coef):
                    raise ModelReadError(f"infinite coefficient for '{name}'", t.line)
                self.var(name)
                coefs[name] = coefs.get(name, 0.0) + sign * coef
            elif has_num:
                const += sign * coef
            else:
                raise ModelReadError(_unexpected(toks[i]), toks[i].line)
        return coefs, const, i

    def _objective(self, toks: list[_Tok], lineno: int) -> None:
        i = 0
        if len(toks) >= 2 and toks[0].kind == "name" and (toks[1].kind == "colon" or toks[1].text == "="):
            i = 2  # `obj: ...` or `Z = ...`
        coefs, const, i = self._expression(toks, i, None)
        if i < len(toks):
            raise ModelReadError(_unexpected(toks[i]) + " in the objective", toks[i].line)
        for name, c in coefs.items():
            self.vars[name].obj = c
        self.model.obj_constant = const

    def _constraints(self, toks: list[_Tok]) -> None:
        names = set()
        i = 0
        while i < len(toks):
            start = toks[i]
            name = None
            if start.kind == "name" and i + 1 < len(toks) and toks[i + 1].kind == "colon":
                name = start.text
                i += 2
            elif start.kind == "bracket":
                raise ModelReadError("quadratic section '[ ... ]' is not supported (linear models only)", start.line)
            sides: list[tuple[dict[str, float], float]] = []
            senses: list[str] = []
            coefs, const, i = self._expression(toks, i, None)
            sides.append((coefs, const))
            while i < len(toks) and toks[i].kind == "sense":
                senses.append(_SENSE[toks[i].text])
                sense_line = toks[i].line
                i += 1
                if i >= len(toks):
                    raise ModelReadError(f"constraint ends after '{toks[i - 1].text}' without a right-hand side", sense_line)
                # the side after a sense ends with its line, so an unlabelled `-x + y >= 2` on the
                # next line starts a new constraint rather than continuing this one
                before = i
                coefs, const, i = self._expression(toks, i, toks[i].line)
                if i == before:
                    raise ModelReadError(f"{_unexpected(toks[i])} after '{toks[i - 1].text}' (expected a number or expression)", toks[i].line)
                sides.append((coefs, const))
            if not senses:
                bad = toks[i] if i < len(toks) else start
                raise ModelReadError(f"constraint without '<=', '>=' or '=' (at {bad.text!r})", bad.line)
            if i < len(toks) and toks[i].kind not in ("name", "op", "num", "inf"):
                raise ModelReadError(_unexpected(toks[i]), toks[i].line)
            label = name or f"R{len(self.model.constraints) + 1}"
            if label in names:
                raise ModelReadError(f"constraint name '{label}' used twice", start.line)
            names.add(label)
            if len(senses) == 1:
                self._add_row(label, sides[0], senses[0], sides[1])
            elif len(senses) == 2 and senses[0] == senses[1] != "=" and not sides[0][0] and not sides[2][0]:
                # ranged row `lo <= expr <= hi`: two rows
                self._add_row(f"{label}_lo", sides[0], senses[0], sides[1])
                self._add_row(f"{label}_hi", sides[1], senses[1], sides[2])
                names.update((f"{label}_lo", f"{label}_hi"))
            else:
                raise ModelReadError("a chained constraint must read 'constant <= expression <= constant'", start.line)

    def _add_row(self, name: str, left: tuple[dict[str, float], float], sense: str, right: tuple[dict[str, float], float]) -> None:
        if not left[0] and right[0]:  # `3 <= y + 2 z` reads as `y + 2 z >= 3`
            left, right, sense = right, left, {"<=": ">=", ">=": "<=", "=": "="}[sense]
        coefs = dict(left[0])
        for v, c in right[0].items():
            coefs[v] = coefs.get(v, 0.0) - c
        coefs = {v: c for v, c in coefs.items() if c != 0.0}
        self.model.constraints.append(Constraint(name, coefs, sense, right[1] - left[1]))

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
                flip = {"<=": ">=", ">=": "<=", "=": "="}
                self._bound(items[2][1], flip[items[1][1]], items[0][1], lineno)
            elif [k for k, _ in items] == ["num", "sense", "name", "sense", "num"]:
                flip = {"<=": ">=", ">=": "<=", "=": "="}
                self._bound(items[2][1], flip[items[1][1]], items[0][1], lineno)
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

_MPS_SECTIONS = {"NAME", "ROWS", "COLUMNS", "RHS", "RANGES", "BOUNDS", "ENDATA", "OBJSENSE", "OBJSENS"}
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
    obj_row: str | None = None
    ranges: dict[str, float] = {}
    section = None
    integer = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("*"):
            continue
        if not raw[0].isspace():
            head = raw.split()
            section = head[0].upper().rstrip(":")
            if section not in _MPS_SECTIONS:
                raise ModelReadError(f"unknown MPS section {head[0]!r}", lineno)
            if section.startswith("OBJSENS") and len(head) > 1:
                model.sense = _mps_sense(head[1], lineno)
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
                if kind == "N":
                    if obj_row is None:
                        obj_row = name
                    rows[name] = ("N", None)
                elif kind in ("L", "G", "E"):
                    con = Constraint(name, {}, {"L": "<=", "G": ">=", "E": "="}[kind], 0.0)
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
                if kind in ("FR", "MI", "PL", "BV"):  # `FR [set] col` (BV may carry a value)
                    col, value = (f[1] if len(f) == 2 else f[2]), None
                elif len(f) in (3, 4):  # `UP [set] col value`
                    col, value = f[-2], _mps_number(f[-1], lineno)
                else:
                    raise ModelReadError(f"bound {kind} needs a column and a value", lineno)
                if col not in vars_:
                    raise ModelReadError(f"bound on unknown column {col!r}", lineno)
                _mps_bound(vars_[col], kind, value, lineno)
            else:
                raise ModelReadError(f"data line in section {section}", lineno)
        except (ValueError, IndexError) as err:
            if isinstance(err, ModelReadError):
                raise
            raise ModelReadError(f"cannot read MPS line {raw.strip()[:60]!r}", lineno) from None
    if section != "ENDATA":
        raise ModelReadError("MPS text ends without ENDATA")
    for name, r in ranges.items():
        con = rows[name][1]
        lo, hi = _range(con.sense, con.rhs, r)
        # a ranged row becomes two rows
        con.sense, con.rhs = ">=", lo
        model.constraints.append(Constraint(f"{name}_range", dict(con.coefs), "<=", hi))
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

    def expr(coefs: dict[str, float]) -> str:
        parts = [f"{'-' if c < 0 else '+'} {_fmt(abs(c))} {n}" for n, c in coefs.items()]
        text = " ".join(parts)
        return text[2:] if text.startswith("+ ") else text

    lines = ["Maximize" if model.sense == "max" else "Minimize"]
    obj = expr({v.name: v.obj for v in model.variables})  # every variable, so the order reads back the same
    if model.obj_constant != 0.0:
        obj = f"{obj} {'-' if model.obj_constant < 0 else '+'} {_fmt(abs(model.obj_constant))}".strip()
    lines.append(f" obj: {obj}")
    lines.append("Subject To")
    for c in model.constraints:
        lines.append(f" {c.name}: {expr(c.coefs) or '0'} {c.sense} {_fmt(c.rhs)}")
    lines.append("Bounds")
    for v in model.variables:
        default = (0.0, 1.0) if v.vtype == "B" else (0.0, INF)
        if (v.lb, v.ub) != default:
            lines.append(f" {v.name} free" if (v.lb, v.ub) == (-INF, INF) else f" {_fmt(v.lb)} <= {v.name} <= {_fmt(v.ub)}")
    for section, vtype in (("Generals", "I"), ("Binaries", "B")):
        names = [v.name for v in model.variables if v.vtype == vtype]
        if names:
            lines.append(section)
            lines.extend(f" {n}" for n in names)
    lines.append("End")
    return "\n".join(lines) + "\n"


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(x))
