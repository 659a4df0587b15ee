"""A teacher whose code answers err the way a real LLM's do, for SFT and revision demonstrations.

Each error kind turns a problem's reference model into a flawed pyscipopt program meant to get
one verdict (`KINDS`, named as `solver_ppo.evaluation.summary.exposure` names verdicts): an
exception at a line (a misspelled data key or variable name, a wrong solver-API call, a type
error), an infeasible model (a conflicting row, a flipped sense that conflicts), an unbounded one
(a bound or row left out), every variable 0 (every requirement written as a limit), or a silent
one that solves to a wrong nonzero optimum (a miscopied number, a flipped sense that still solves,
a missing constraint). The model-level kinds are checked with SCIP before they are kept; a kind
that cannot give its verdict on a problem gives None.

`ORLM_MIX`, the default shares, is the mix of verdicts among the 228 wrong answers of
ORLM-LLaMA-3-8B's 556 published answers (NL4OPT, MAMO ComplexLP, IndustryOR; docs/evaluation.md,
"Revision headroom"): 72 raise or fail to parse, 50 infeasible (one of them a time limit on a
loaded machine), 6 unbounded, 5 every variable 0, 95 silent; a verdict's count is split evenly
over its kinds.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable

from solver_ppo.errors import UserError

KINDS = {  # kind -> the verdict it is meant to get
    "misspelled_key": "exception",  # a row's data names an item that is not in `items`: KeyError
    "misspelled_name": "exception",  # the objective reads a data dict by a name never defined: NameError
    "wrong_api": "exception",  # m.addConstraint instead of pyscipopt's m.addCons: AttributeError
    "type_error": "exception",  # a right-hand side written as a string: TypeError in the comparison
    "conflicting_row": "infeasible",  # a row stated twice with a right-hand side that contradicts it
    "conflicting_flip": "infeasible",  # one row's sense flipped, and it contradicts the others
    "missing_bound": "unbounded",  # a variable's lower bound or a row left out, and nothing stops the objective
    "requirements_as_limits": "every variable 0",  # every >= row written as <=, in a minimization
    "miscopied_number": "silent",  # one coefficient or right-hand side miscopied
    "flipped_sense": "silent",  # one row's sense flipped, and the model still solves
    "missing_constraint": "silent",  # one row left out, and the model still solves
}
_VERDICT_COUNTS = {"exception": 72, "infeasible": 50, "unbounded": 6, "every variable 0": 5, "silent": 95}
ORLM_MIX = {kind: _VERDICT_COUNTS[verdict] / sum(v == verdict for v in KINDS.values()) for kind, verdict in KINDS.items()}
FORMAT = "pyscipopt"  # the code answers the kinds are written for


def parse_mix(text: str) -> dict[str, float]:
    """'kind=weight,...' (kinds of KINDS, weights >= 0, not all 0) -> {kind: share}, shares summing to 1."""
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, weight = part.partition("=")
        kind = kind.strip()
        if kind not in KINDS:
            raise UserError(f"unknown teacher error kind '{kind}' in '{text}'; choose from {', '.join(KINDS)}")
        try:
            mix[kind] = float(weight)
        except ValueError:
            raise UserError(f"teacher error kind '{kind}' needs a weight, as {kind}=0.2; got '{part}'") from None
        if mix[kind] < 0:
            raise UserError(f"teacher error weights must be 0 or more, got {kind}={mix[kind]:g}")
    total = sum(mix.values())
    if total <= 0:
        raise UserError(f"teacher error mix '{text}' gives no kind a positive weight")
    return {kind: weight / total for kind, weight in mix.items()}


def flawed_answer(kind: str, reference_lp: str, reference_value: float, rng: random.Random, name: str) -> str | None:
    """The teacher's pyscipopt answer with error `kind` on the problem whose reference model is
    `reference_lp` (optimum `reference_value`), or None when this kind cannot give its verdict here."""
    from solver_ppo.data.code_answers import code_answer
    from solver_ppo.evaluation.model import read_model

    model = read_model(reference_lp)
    if kind in _CODE_SLIPS:
        return _CODE_SLIPS[kind](code_answer(model, FORMAT, name), rng)
    flawed = _MODEL_SLIPS[kind](model, reference_value, rng)
    return None if flawed is None else code_answer(flawed, FORMAT, name)


# ----------------------------------------------------------------------------- slips in the code


def _misspelled_key(code: str, rng: random.Random) -> str | None:
    rows = [m for m in re.finditer(r"^    '[^']+': \(\{'([^']+)': ", code, re.M)]
    if not rows:
        return None
    row = rng.choice(rows)
    key = row.group(1)
    wrong = key[:-1] if len(key) > 2 else key + key[-1]  # a dropped (or doubled) last letter
    return code[:row.start(1)] + wrong + code[row.end(1):]


def _misspelled_name(code: str, rng: random.Random) -> str | None:
    found = re.search(r"quicksum\((value|cost)\[i\]", code)
    if found is None:
        return None
    return code[:found.start(1)] + found.group(1) + "s" + code[found.end(1):]


def _wrong_api(code: str, rng: random.Random) -> str | None:
    return code.replace("m.addCons(", "m.addConstraint(", 1) if "m.addCons(" in code else None


def _type_error(code: str, rng: random.Random) -> str | None:
    rows = [m for m in re.finditer(r"^    '[^']+': \(\{.*\}, (-?[\d.e+]+)\),$", code, re.M)]
    if not rows:
        return None
    row = rng.choice(rows)
    return code[:row.start(1)] + f"'{row.group(1)}'" + code[row.end(1):]


_CODE_SLIPS: dict[str, Callable[[str, random.Random], str | None]] = {
    "misspelled_key": _misspelled_key, "misspelled_name": _misspelled_name, "wrong_api": _wrong_api,
    "type_error": _type_error}


# ----------------------------------------------------------------------------- slips in the model


def _verdict(model, reference_value: float) -> str:
    """The verdict SCIP gives `model` against the reference optimum, named as KINDS name them."""
    from solver_ppo.evaluation.config import SolverLimits
    from solver_ppo.evaluation.solve import solve_model

    result = solve_model(model, SolverLimits())
    if result.status != "optimal":
        return result.status
    if abs(result.objective - reference_value) <= 1e-6 * (abs(reference_value) + 1.0):
        return "right"
    return "silent" if any(abs(v) > 1e-9 for v in result.values.values()) else "every variable 0"


def _first(candidates, want: str, reference_value: float):
    """The first candidate model whose verdict is `want`, or None."""
    return next((m for m in candidates if _verdict(m, reference_value) == want), None)


def _variants(model, rng: random.Random, change: Callable) -> list:
    """One changed copy of `model` per constraint, in a random order: change(copy, index) edits it
    (returns False when it does not apply to that row)."""
    out = []
    for i in rng.sample(range(len(model.constraints)), len(model.constraints)):
        changed = copy.deepcopy(model)
        if change(changed, i) is not False:
            out.append(changed)
    return out


def _flip(model, i: int) -> bool:
    row = model.constraints[i]
    if row.sense == "=":
        return False
    row.sense = "<=" if row.sense == ">=" else ">="
    return True


def _drop(model, i: int) -> None:
    del model.constraints[i]


def _conflicting_row(model, reference_value: float, rng: random.Random):
    def restate(changed, i: int) -> None:
        row = copy.deepcopy(changed.constraints[i])
        gap = max(1.0, abs(row.rhs) // 2)  # a number the other statement cannot reach
        row.sense, row.rhs = ("<=", row.rhs - gap) if row.sense in (">=", "=") else (">=", row.rhs + gap)
        changed.constraints.insert(i + 1, row)
    return _first(_variants(model, rng, restate), "infeasible", reference_value)


def _conflicting_flip(model, reference_value: float, rng: random.Random):
    return _first(_variants(model, rng, _flip), "infeasible", reference_value)


def _missing_bound(model, reference_value: float, rng: random.Random):
    def free(changed, i: int) -> None:
        changed.variables[i].lb = float("-inf")
        changed.variables[i].vtype = "I" if changed.variables[i].vtype == "B" else changed.variables[i].vtype
    freed = []
    for i in rng.sample(range(len(model.variables)), len(model.variables)):
        changed = copy.deepcopy(model)
        free(changed, i)
        freed.append(changed)
    return _first(freed + _variants(model, rng, _drop), "unbounded", reference_value)


def _requirements_as_limits(model, reference_value: float, rng: random.Random):
    if not any(c.sense == ">=" for c in model.constraints):
        return None
    changed = copy.deepcopy(model)
    for row in changed.constraints:
        row.sense = "<=" if row.sense == ">=" else row.sense
    return changed if _verdict(changed, reference_value) == "every variable 0" else None


def _miscopied_number(model, reference_value: float, rng: random.Random):
    def miscopy(changed, i: int) -> None:
        row = changed.constraints[i]
        if rng.random() < 0.5:
            row.rhs = _miscopied(row.rhs, rng)
        else:
            item = rng.choice(list(row.coefs))
            row.coefs[item] = _miscopied(row.coefs[item], rng)
    return _first(_variants(model, rng, miscopy), "silent", reference_value)


def _miscopied(x: float, rng: random.Random) -> float:
    """A number as a slip copies it: its digits swapped, one added, or a digit doubled."""
    text = f"{x:g}"
    digits = [i for i, ch in enumerate(text) if ch.isdigit()]
    if len(digits) >= 2 and text[digits[0]] != text[digits[1]] and rng.random() < 0.5:
        a, b = digits[0], digits[1]
        return float(text[:a] + text[b] + text[a] + text[b + 1:])
    if text[-1].isdigit() and rng.random() < 0.5:
        return float(text + text[-1])
    return x + 1


def _flipped_sense(model, reference_value: float, rng: random.Random):
    return _first(_variants(model, rng, _flip), "silent", reference_value)


def _missing_constraint(model, reference_value: float, rng: random.Random):
    return _first(_variants(model, rng, _drop), "silent", reference_value)


_MODEL_SLIPS = {"conflicting_row": _conflicting_row, "conflicting_flip": _conflicting_flip, "missing_bound": _missing_bound,
                "requirements_as_limits": _requirements_as_limits, "miscopied_number": _miscopied_number,
                "flipped_sense": _flipped_sense, "missing_constraint": _missing_constraint}
