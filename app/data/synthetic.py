"""Synthetic optimization word problems with reference LP models and solver-computed optima.

They exist so that a tiny model on CPU can learn to write models at all. Such a model learns to
copy, not to do arithmetic, so every problem is built to be copyable: each number of the LP
appears in the question exactly as the LP writes it (plain integers or short decimals), the
variables and constraints are named with words of the question, and the constraints come in
the order the question states them. Easy problems are short (2-3 variables, 2-3 constraints,
single-digit coefficients).

Every problem is built around a feasible "witness" point: right-hand sides are set so that the
witness satisfies them, so a problem meant to be feasible is feasible by construction; an
infeasible one gets a requirement that provably exceeds what the other constraints allow. The
solver then checks both and computes the optimum.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass

from solver_ppo.data.code_answers import ANSWER_FORMATS, code_answer
from solver_ppo.data.prompts import format_number, lp_answer
from solver_ppo.errors import UserError

DIFFICULTIES = {"easy": 0.0, "medium": 0.5, "hard": 1.0}

# A number as written in questions and LPs: not part of a name such as `c1` or `A2`, and a
# sentence's full stop does not belong to it ("40." is 40).
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?!\w|\.\d)")


@dataclass
class Level:
    """Sizes and number ranges of one difficulty."""

    vars: tuple[int, int]  # inclusive range of the number of variables
    cons: tuple[int, int]  # inclusive range of the number of constraints
    max_coef: int  # constraint coefficients are drawn from 1..max_coef
    max_obj: int  # objective coefficients are drawn from 1..max_obj
    max_witness: int  # entries of the feasible witness point are drawn from 1..max_witness
    halves: bool  # some coefficients are n.5


def level(difficulty: str | float) -> Level:
    """'easy' | 'medium' | 'hard' or a float in [0, 1] (0 = easy, 1 = hard) -> its Level."""
    if isinstance(difficulty, str) and difficulty in DIFFICULTIES:
        d = DIFFICULTIES[difficulty]
    else:
        try:
            d = float(difficulty)
        except ValueError:
            d = -1.0
        if not 0.0 <= d <= 1.0:
            raise UserError(f"difficulty must be easy, medium, hard or a number in [0, 1], got '{difficulty}'")
    return Level(
        vars=(2 + math.floor(2 * d), 3 + math.floor(3 * d)),
        cons=(2 + math.floor(2 * d), 3 + math.floor(3 * d)),
        max_coef=9 + math.floor(21 * d),
        max_obj=9 + math.floor(31 * d),
        max_witness=6 + math.floor(14 * d),
        halves=d > 0.7,
    )


@dataclass
class Draft:
    """A problem before solving: its question and the model the question states, term by term."""

    question: str
    sense: str  # maximize | minimize
    objective: dict[str, float]  # variable -> coefficient, in the order of the question
    constraints: list[tuple[str, dict[str, float], str, float]]  # (name, terms, <= | >= | =, rhs)
    vtype: str  # continuous | integer | binary


@dataclass
class Item:
    """One generated problem, as written to JSONL (id, question, answer, reference_model are what
    the data module reads; the rest is for analysis)."""

    id: str
    question: str
    answer: str  # the optimum, or "infeasible"
    reference_model: str  # LP text
    family: str
    difficulty: str | float
    sense: str
    type: str  # LP | MILP
    n_vars: int
    n_cons: int
    demonstration: str | None = None  # the teacher's answer for SFT where it differs from the reference
    revision: dict | None = None  # {"answer": the teacher's first answer, "feedback": the evaluation's on it}

    def to_json(self) -> dict:
        return asdict(self)


def write_jsonl(path, items: list[Item]) -> None:
    """Items as JSONL in the project's dataset format (one problem per line)."""
    with open(path, "w") as f:
        for item in items:
            f.write(json.dumps(item.to_json()) + "\n")


# ---------------------------------------------------------------------------------------------
# wording helpers


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _listing(rng: random.Random, names: list[str], values: list[float]) -> str:
    """'chairs 3, tables 5 and desks 4' or 'chairs: 3, tables: 5, desks: 4': each name, then its number."""
    n = [format_number(v) for v in values]
    if rng.random() < 0.5:
        return _join([f"{a} {b}" for a, b in zip(names, n)])
    return ", ".join(f"{a}: {b}" for a, b in zip(names, n))


def _coef(rng: random.Random, lvl: Level, top: int) -> float:
    value = rng.randint(1, top)
    return value + 0.5 if lvl.halves and rng.random() < 0.3 else value


def _dot(terms: dict[str, float], point: dict[str, float]) -> float:
    return sum(c * point[v] for v, c in terms.items())


def _plural(word: str, names: list[str]) -> str:
    return word if len(names) == 1 else word + "s"


def _vtype(rng: random.Random) -> str:
    return "integer" if rng.random() < 0.5 else "continuous"


WHOLE = ["Only whole units are allowed.", "All quantities must be whole numbers.", "Use integer amounts."]

# ---------------------------------------------------------------------------------------------
# families: (rng, level, infeasible) -> Draft, or None when this draw cannot be made


PRODUCTION_SETTINGS = [
    ("A workshop", ["chairs", "tables", "desks", "shelves", "stools", "benches", "cabinets"],
     ["wood", "labor", "paint", "glue", "sanding", "assembly"]),
    ("A bakery", ["bread", "cakes", "muffins", "pies", "cookies", "buns", "tarts"],
     ["flour", "sugar", "butter", "oven", "labor", "milk"]),
    ("A factory", ["bikes", "scooters", "carts", "wagons", "trikes", "skates", "sleds"],
     ["steel", "rubber", "machine", "labor", "welding", "packing"]),
]


def production(rng: random.Random, lvl: Level, infeasible: bool) -> Draft:
    """Products share limited resources; maximize profit (maybe with a minimum order) or
    minimize cost while making enough units in total."""
    maker, product_pool, resource_pool = rng.choice(PRODUCTION_SETTINGS)
    sense = "minimize" if rng.random() < 0.3 else "maximize"
    n_cons = rng.randint(*lvl.cons)
    extra = sense == "minimize" or infeasible or rng.random() < 0.3
    n_res = n_cons - int(extra)
    products = rng.sample(product_pool, rng.randint(*lvl.vars))
    resources = rng.sample(resource_pool, n_res)
    witness = {p: rng.randint(1, lvl.max_witness) for p in products}
    objective = {p: _coef(rng, lvl, lvl.max_obj) for p in products}
    rows = []
    for r in resources:
        terms = {p: _coef(rng, lvl, lvl.max_coef) for p in products}
        rows.append((r, terms, "<=", math.ceil(_dot(terms, witness)) + rng.randint(0, lvl.max_coef)))
    # the most of product p that the resources allow on their own
    alone = {p: min(rhs / terms[p] for _, terms, _, rhs in rows) for p in products}

    unit = "profit" if sense == "maximize" else "cost"
    sentences = [rng.choice([f"{maker} makes {_join(products)}.", f"{maker} can produce {_join(products)}."]),
                 rng.choice([f"The {unit} per unit is {_listing(rng, products, list(objective.values()))}.",
                             f"{unit.capitalize()} per unit: {_listing(rng, products, list(objective.values()))}."])]
    for name, terms, _, rhs in rows:
        usage = _listing(rng, products, list(terms.values()))
        sentences.append(rng.choice([
            f"Use of {name} per unit: {usage}; {format_number(rhs)} available.",
            f"Each unit needs {name}: {usage}; at most {format_number(rhs)} in all.",
            f"There are {format_number(rhs)} units of {name}; per unit {usage}.",
        ]))
    if sense == "maximize" and extra:
        q = rng.choice(products)
        need = math.floor(alone[q]) + rng.randint(1, lvl.max_coef) if infeasible else rng.randint(1, witness[q])
        rows.append(("demand", {q: 1}, ">=", need))
        sentences.append(rng.choice([f"At least {need} {q} must be made.", f"Orders require {need} or more {q}."]))
    if sense == "minimize":
        total = (math.floor(sum(alone.values())) + rng.randint(1, lvl.max_coef) if infeasible
                 else rng.randint(max(1, sum(witness.values()) // 2), sum(witness.values())))
        rows.append(("total", {p: 1 for p in products}, ">=", total))
        sentences.append(rng.choice([f"At least {total} units must be made in total.",
                                     f"Total output must be {total} or more."]))
    sentences.append(rng.choice({"maximize": ["Maximize profit.", "Find the plan with the most profit."],
                                 "minimize": ["Minimize cost.", "Find the cheapest plan."]}[sense]))
    vtype = _vtype(rng)
    if vtype == "integer":
        sentences.append(rng.choice(WHOLE))
    return Draft(" ".join(sentences), sense, objective, rows, vtype)


DIET_SETTINGS = [
    ("A diet", "serving", ["oats", "rice", "beans", "milk", "corn", "bread", "fish", "tofu"],
     ["protein", "fiber", "iron", "calcium", "energy", "zinc"]),
    ("A feed mix", "kg", ["hay", "barley", "soy", "alfalfa", "maize", "bran", "millet", "kelp"],
     ["protein", "fiber", "fat", "calcium", "phosphorus", "energy"]),
]


def diet(rng: random.Random, lvl: Level, infeasible: bool) -> Draft | None:
    """Blend foods to meet nutrient minimums at least cost, maybe under a cap on the total."""
    what, unit, food_pool, nutrient_pool = rng.choice(DIET_SETTINGS)
    n_cons = rng.randint(*lvl.cons)
    capped = infeasible or rng.random() < 0.3
    n_nut = n_cons - int(capped)
    foods = rng.sample(food_pool, rng.randint(*lvl.vars))
    nutrients = rng.sample(nutrient_pool, n_nut)
    witness = {f: rng.randint(1, lvl.max_witness) for f in foods}
    objective = {f: _coef(rng, lvl, lvl.max_obj) for f in foods}
    rows = []
    for nut in nutrients:
        terms = {f: _coef(rng, lvl, lvl.max_coef) for f in foods}
        rows.append((nut, terms, ">=", max(1, math.floor(_dot(terms, witness)) - rng.randint(0, lvl.max_coef))))

    sentences = [rng.choice([f"{what} can use {_join(foods)}.", f"{what} is made from {_join(foods)}."]),
                 rng.choice([f"Cost per {unit}: {_listing(rng, foods, list(objective.values()))}.",
                             f"The cost per {unit} is {_listing(rng, foods, list(objective.values()))}."])]
    for nut, terms, _, rhs in rows:
        content = _listing(rng, foods, list(terms.values()))
        sentences.append(rng.choice([
            f"Per {unit}, {nut} is {content}; need at least {format_number(rhs)}.",
            f"Each {unit} gives {nut}: {content}; need {format_number(rhs)} or more.",
            f"It needs at least {format_number(rhs)} {nut}; per {unit} {content}.",
        ]))
    if capped:
        # fewest units that meet the hardest requirement with the richest food
        least = max(math.ceil(rhs / max(terms.values())) for _, terms, _, rhs in rows)
        cap = least - rng.randint(1, 3) if infeasible else sum(witness.values()) + rng.randint(0, 3)
        if cap < 1:
            return None
        rows.append(("total", {f: 1 for f in foods}, "<=", cap))
        sentences.append(rng.choice([f"At most {cap} {unit} can be used in total.",
                                     f"The total is limited to {cap} {unit}."]))
    sentences.append(rng.choice(["Minimize the total cost.", "Find the cheapest mix."]))
    vtype = _vtype(rng)
    if vtype == "integer":
        sentences.append(rng.choice([f"Use whole {unit} amounts.", "Use integer amounts."]))
    return Draft(" ".join(sentences), "minimize", objective, rows, vtype)


def _grids(lvl: Level, want_short: bool) -> list[tuple[int, int]]:
    """(rows, cols) grids whose rows*cols variables and rows+cols constraints fit the level, those
    with at least 2 rows and 2 columns if there are any; `want_short`: more columns than rows."""
    grids = [(r, c) for r in range(1, 7) for c in range(1, 7)
             if r * c >= 2 and lvl.vars[0] <= r * c <= lvl.vars[1] and lvl.cons[0] <= r + c <= lvl.cons[1]
             and (c > r or not want_short)]
    return [(r, c) for r, c in grids if min(r, c) >= 2] or grids


def transportation(rng: random.Random, lvl: Level, infeasible: bool) -> Draft:
    """Ship from warehouses to stores: minimize cost meeting demands within supplies, or
    maximize profit within supplies and store capacities."""
    sense = "maximize" if not infeasible and rng.random() < 0.25 else "minimize"
    grids = _grids(lvl, want_short=False)
    n_src, n_dst = rng.choice(grids)
    sources = ["A", "B", "C", "D", "F", "G"][:n_src]
    stores = [str(k) for k in range(1, n_dst + 1)]
    routes = [s + t for s in sources for t in stores]
    flow = {v: rng.randint(1, lvl.max_witness) for v in routes}
    objective = {v: _coef(rng, lvl, lvl.max_obj) for v in routes}
    supply = {s: sum(flow[s + t] for t in stores) + rng.randint(0, lvl.max_coef) for s in sources}
    demand = {t: sum(flow[s + t] for s in sources) for t in stores}
    if infeasible:  # demand beyond the total supply
        last = stores[-1]
        demand[last] += sum(supply.values()) - sum(demand.values()) + rng.randint(1, lvl.max_coef)
    elif sense == "minimize":
        demand = {t: d - rng.randint(0, d - 1) // 2 for t, d in demand.items()}
    else:
        demand = {t: d + rng.randint(0, lvl.max_coef) for t, d in demand.items()}

    unit = "profit" if sense == "maximize" else "cost"
    sentences = [rng.choice([
        f"{_plural('Warehouse', sources)} {_join(sources)} supply {_plural('store', stores)} {_join(stores)}.",
        f"Goods go from {_plural('warehouse', sources)} {_join(sources)} to {_plural('store', stores)} {_join(stores)}.",
    ])]
    if rng.random() < 0.5:
        sentences.append(f"The {unit} per unit shipped is " + _join(
            [f"{format_number(objective[v])} from {v[0]} to {v[1:]}" for v in routes]) + ".")
    else:
        sentences.append(f"{unit.capitalize()} per unit: " + ", ".join(
            f"{s} to {t}: {format_number(objective[s + t])}" for s in sources for t in stores) + ".")
    sentences.append(rng.choice([
        "Supplies: " + _join([f"{s} has {supply[s]}" for s in sources]) + ".",
        "Warehouse " + _join([f"{s} can ship at most {supply[s]}" for s in sources]) + ".",
    ]))
    if sense == "minimize":
        sentences.append(rng.choice([
            "Demands: " + _join([f"store {t} needs at least {demand[t]}" for t in stores]) + ".",
            "Store " + _join([f"{t} needs {demand[t]} or more" for t in stores]) + ".",
        ]))
    else:
        sentences.append("Store " + _join([f"{t} can take at most {demand[t]}" for t in stores]) + ".")
    sentences.append(rng.choice(["Minimize the total shipping cost.", "Find the cheapest shipping plan."]
                                if sense == "minimize" else ["Maximize the total profit."]))
    vtype = _vtype(rng)
    if vtype == "integer":
        sentences.append(rng.choice(["Ship whole units only.", "All amounts must be integers."]))
    rows = [(f"supply_{s}", {s + t: 1 for t in stores}, "<=", supply[s]) for s in sources]
    op = ">=" if sense == "minimize" else "<="
    rows += [(f"demand_{t}", {s + t: 1 for s in sources}, op, demand[t]) for t in stores]
    return Draft(" ".join(sentences), sense, objective, rows, vtype)


WORKERS = ["Ann", "Bob", "Cal", "Dan", "Gus", "Ivy"]
TASKS = ["weld", "paint", "sort", "pack", "test", "load"]


def assignment(rng: random.Random, lvl: Level, infeasible: bool) -> Draft:
    """Each task gets exactly 1 worker, each worker takes at most a few tasks; minimize cost or
    maximize score. Infeasible: more tasks than the workers can take."""
    grids = _grids(lvl, want_short=infeasible)
    n_w, n_t = rng.choice(grids)
    workers, tasks = rng.sample(WORKERS, n_w), rng.sample(TASKS, n_t)
    # infeasible grids have more tasks than workers, so this cap is at least 1
    cap = math.ceil(n_t / n_w) - 1 if infeasible else math.ceil(n_t / n_w) + rng.randint(0, 1)
    sense = "minimize" if rng.random() < 0.6 else "maximize"
    # a wider range than other families: small grids have few numbers, and the splits need
    # hundreds of distinct problems
    objective = {f"{w}_{t}": _coef(rng, lvl, lvl.max_obj + 20) for w in workers for t in tasks}

    unit = "cost" if sense == "minimize" else "score"
    sentences = [rng.choice([f"{_plural('Worker', workers)} {_join(workers)} can do {_plural('task', tasks)} {_join(tasks)}.",
                             f"{_plural('Task', tasks)} {_join(tasks)} must be given to {_plural('worker', workers)} {_join(workers)}."])]
    for w in workers:
        values = [objective[f"{w}_{t}"] for t in tasks]
        sentences.append(rng.choice([f"{w}'s {unit}: {_listing(rng, tasks, values)}.",
                                     f"The {unit} of {w} is {_listing(rng, tasks, values)}."]))
    most = f"{cap} {'task' if cap == 1 else 'tasks'}"
    sentences.append(rng.choice([f"Each task needs exactly 1 worker and each worker can take at most {most}.",
                                 f"Every task goes to exactly 1 worker; no worker does more than {most}."]))
    sentences.append(f"Minimize the total {unit}." if sense == "minimize" else f"Maximize the total {unit}.")
    rows = [(t, {f"{w}_{t}": 1 for w in workers}, "=", 1) for t in tasks]
    rows += [(w, {f"{w}_{t}": 1 for t in tasks}, "<=", cap) for w in workers]
    return Draft(" ".join(sentences), sense, objective, rows, "binary")


KNAPSACK_SETTINGS = [
    ("binary", "A city can fund projects", ["solar", "roads", "school", "park", "clinic", "bridge", "library"],
     ["capital", "staff", "land", "permits", "water", "power"], "return", "projects"),
    ("integer", "A truck can carry", ["boxes", "crates", "drums", "bags", "bales", "kegs", "rolls"],
     ["weight", "volume", "length", "pallets", "handling", "fuel"], "value", "items"),
]


def knapsack(rng: random.Random, lvl: Level, infeasible: bool) -> Draft | None:
    """Pick projects (binary) or load items (integer) under resource limits to maximize value,
    maybe with a count limit; infeasible: a minimum count that no selection can afford."""
    vtype, intro, item_pool, resource_pool, gain, noun = rng.choice(KNAPSACK_SETTINGS)
    n_cons = rng.randint(*lvl.cons)
    counted = infeasible or rng.random() < 0.4
    n_res = n_cons - int(counted)
    items = rng.sample(item_pool, rng.randint(*lvl.vars))
    top = 1 if vtype == "binary" else lvl.max_witness
    witness = {i: rng.randint(0, top) for i in items}
    objective = {i: _coef(rng, lvl, lvl.max_obj) for i in items}
    rows = []
    for r in rng.sample(resource_pool, n_res):
        terms = {i: _coef(rng, lvl, lvl.max_coef) for i in items}
        rows.append((r, terms, "<=", max(1, math.ceil(_dot(terms, witness))) + rng.randint(0, lvl.max_coef)))

    sentences = [f"{intro} {_join(items)}.",
                 rng.choice([f"The {gain} of each is {_listing(rng, items, list(objective.values()))}.",
                             f"{gain.capitalize()}: {_listing(rng, items, list(objective.values()))}."])]
    for name, terms, _, rhs in rows:
        use = _listing(rng, items, list(terms.values()))
        sentences.append(rng.choice([f"Use of {name}: {use}; the limit is {format_number(rhs)}.",
                                     f"Each uses {name}: {use}; at most {format_number(rhs)} in all."]))
    if counted:
        if infeasible:
            # the most items any single resource allows, taking the cheapest first
            most = min(_most_items(terms, rhs, vtype == "binary") for _, terms, _, rhs in rows)
            if vtype == "binary" and most >= len(items):
                return None
            rows.append(("count", {i: 1 for i in items}, ">=", most + 1))
            sentences.append(f"At least {most + 1} {noun} must be chosen.")
        elif rng.random() < 0.5:
            k = sum(witness.values()) + rng.randint(0, 1)
            rows.append(("count", {i: 1 for i in items}, "<=", max(1, k)))
            sentences.append(f"At most {max(1, k)} {noun} can be chosen.")
        else:
            k = rng.randint(1, sum(witness.values())) if sum(witness.values()) else 0
            if k == 0:
                return None
            rows.append(("count", {i: 1 for i in items}, ">=", k))
            sentences.append(f"At least {k} {noun} must be chosen.")
    sentences.append(rng.choice([f"Maximize the total {gain}.", f"Find the largest total {gain}."]))
    sentences.append("Each can be chosen at most once." if vtype == "binary" else rng.choice(WHOLE))
    return Draft(" ".join(sentences), "maximize", objective, rows, vtype)


def _most_items(terms: dict[str, float], rhs: float, binary: bool) -> int:
    """How many units fit under one `<=` row, cheapest first (at most 1 of each if binary)."""
    if not binary:
        return math.floor(rhs / min(terms.values()))
    count, room = 0, rhs
    for c in sorted(terms.values()):
        if c <= room:
            count, room = count + 1, room - c
    return count


SHIFTS = ["early", "day", "late", "split", "swing", "relief"]
PERIODS = ["dawn", "morning", "noon", "afternoon", "dusk", "night"]


def staffing(rng: random.Random, lvl: Level, infeasible: bool) -> Draft | None:
    """Shifts cover consecutive periods; hire enough staff in every period at least cost, maybe
    under a cap on the total hired."""
    n_cons = rng.randint(*lvl.cons)
    capped = infeasible or (n_cons >= 3 and rng.random() < 0.3)
    n_per = n_cons - int(capped)
    n_sh = rng.randint(*lvl.vars)
    periods = PERIODS[:n_per] if rng.random() < 0.5 else PERIODS[-n_per:]
    shifts = rng.sample(SHIFTS, n_sh)
    starts = [i * n_per // n_sh for i in range(n_sh)] + [n_per]
    # shift i covers the periods from its start up to the next shift's start, maybe one more
    covers = {s: periods[starts[i]:max(starts[i + 1], starts[i] + 1) + rng.randint(0, 1)]
              for i, s in enumerate(shifts)}
    witness = {s: rng.randint(1, lvl.max_witness) for s in shifts}
    objective = {s: _coef(rng, lvl, lvl.max_obj) for s in shifts}
    rows = []
    for p in periods:
        terms = {s: 1 for s in shifts if p in covers[s]}
        rows.append((p, terms, ">=", max(1, round(_dot(terms, witness)) - rng.randint(0, 2))))

    place = rng.choice(["A call center", "A hospital ward", "A store", "A hotel desk"])
    sentences = [rng.choice([f"{place} staffs the {_join(shifts)} shifts.", f"{place} hires staff for shifts {_join(shifts)}."]),
                 rng.choice([f"Pay per worker: {_listing(rng, shifts, list(objective.values()))}.",
                             f"Each worker costs {_listing(rng, shifts, list(objective.values()))}."])]
    sentences.append("The " + "; the ".join(f"{s} shift covers {_join(covers[s])}" for s in shifts) + ".")
    sentences.append(rng.choice(["Staff needed: " + _join([f"{rhs} at {p}" for p, _, _, rhs in rows]) + ".",
                                 "At least " + _join([f"{rhs} work at {p}" for p, _, _, rhs in rows]) + "."]))
    if capped:
        need = max(rhs for _, _, _, rhs in rows)  # every one of these must be hired
        cap = need - rng.randint(1, 2) if infeasible else sum(witness.values()) + rng.randint(0, 3)
        if cap < 1:
            return None
        rows.append(("total", {s: 1 for s in shifts}, "<=", cap))
        sentences.append(f"At most {cap} workers can be hired in total.")
    sentences.append(rng.choice(["Minimize the total pay.", "Find the cheapest schedule."]))
    sentences.append(rng.choice(["Workers are whole people.", "Staff counts must be integers."]))
    return Draft(" ".join(sentences), "minimize", objective, rows, "integer")


FAMILIES: dict[str, Callable[[random.Random, Level, bool], Draft | None]] = {
    "production": production,
    "diet": diet,
    "transportation": transportation,
    "assignment": assignment,
    "knapsack": knapsack,
    "staffing": staffing,
}


# ---------------------------------------------------------------------------------------------
# the LP text, the SFT target, generation and splits


def _terms(terms: dict[str, float]) -> str:
    return " + ".join(v if c == 1 else f"{format_number(c)} {v}" for v, c in terms.items())


def render_lp(draft: Draft) -> str:
    """The one canonical LP style: objective, constraints in question order, integrality, end."""
    lines = [draft.sense, f" obj: {_terms(draft.objective)}", "subject to"]
    lines += [f" {name}: {_terms(terms)} {op} {format_number(rhs)}" for name, terms, op, rhs in draft.constraints]
    if draft.vtype != "continuous":
        lines += ["general" if draft.vtype == "integer" else "binary", " " + " ".join(draft.objective)]
    lines.append("end")
    return "\n".join(lines) + "\n"


def check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise UserError(f"the {name} must be in [0, 1], got {value}")


def signature(item: Item) -> tuple[str, tuple[float, ...]]:
    """(family, sorted numbers of the reference model): two items with equal signatures state the
    same problem up to wording and order, so a split must not put them on both sides."""
    return item.family, tuple(sorted(float(x) for x in NUMBER.findall(item.reference_model)))


def _family_names(families: list[str] | None) -> list[str]:
    names = list(FAMILIES) if not families else list(families)
    unknown = [f for f in names if f not in FAMILIES]
    if unknown:
        raise UserError(f"unknown problem families {unknown}; choose from {', '.join(FAMILIES)}")
    return names


def generate(n: int, seed: int, difficulty: str | float = "easy", families: list[str] | None = None,
             infeasible_fraction: float = 0.05, split: str = "train",
             exclude: frozenset | set = frozenset()) -> list[Item]:
    """`n` solved items, the families in turn, from `random.Random(f"{seed}-{split}")`.

    A draw the solver does not confirm (meant feasible but not optimal, meant infeasible but not
    infeasible, unbounded, errors) is dropped and redrawn, and so is one whose signature is in
    `exclude` or already generated.
    """
    from solver_ppo.evaluation import read_model, solve_model
    from solver_ppo.evaluation.config import SolverLimits
    from solver_ppo.progress import progress_bar

    names = _family_names(families)
    lvl = level(difficulty)
    check_fraction("infeasible fraction", infeasible_fraction)
    rng = random.Random(f"{seed}-{split}")
    limits = SolverLimits()
    seen = set(exclude)
    items = []
    for i in progress_bar(range(n), desc=f"make-data {split}", unit="problem"):
        family = names[i % len(names)]
        infeasible = rng.random() < infeasible_fraction
        repeats = 0
        for _ in range(200):
            draft = FAMILIES[family](rng, lvl, infeasible)
            if draft is None:
                continue
            lp = render_lp(draft)
            result = solve_model(read_model(lp), limits)
            if result.status != ("infeasible" if infeasible else "optimal"):
                continue
            item = Item(id=f"{split}-{i:05d}", question=draft.question,
                        answer="infeasible" if infeasible else format_number(result.objective, 9),
                        reference_model=lp, family=family, difficulty=difficulty, sense=draft.sense,
                        type="LP" if draft.vtype == "continuous" else "MILP",
                        n_vars=len(draft.objective), n_cons=len(draft.constraints))
            if signature(item) in seen:
                repeats += 1
                continue
            seen.add(signature(item))
            items.append(item)
            break
        else:
            raise UserError(f"no new {'infeasible' if infeasible else 'feasible'} {family} problem at difficulty "
                            f"{difficulty} after 200 draws ({repeats} repeated earlier problems) at item {i}; "
                            f"ask for fewer problems or a higher difficulty")
    return items


def make_splits(n_train: int, n_heldout: int, seed: int, difficulty: str | float = "easy",
                families: list[str] | None = None, infeasible_fraction: float = 0.05) -> tuple[list[Item], list[Item]]:
    """(train, heldout) with no (family, numbers) signature in common. The held-out set is drawn
    first from its own stream, so it does not change with `n_train`."""
    heldout = generate(n_heldout, seed, difficulty, families, infeasible_fraction, split="heldout")
    train = generate(n_train, seed, difficulty, families, infeasible_fraction, split="train",
                     exclude={signature(item) for item in heldout})
    return train, heldout


def code_demonstrations(items: list[Item], answer_format: str) -> None:
    """Give every item without a demonstration its reference model as a program in `answer_format`
    (a library of `CODE_FORMATS`), so SFT teaches code answers; 'lp' changes nothing (the SFT
    target is then built from the reference)."""
    check_answer_format(answer_format)
    if answer_format == "lp":
        return
    for item in items:
        if item.demonstration is None:
            item.demonstration = code_answer(item.reference_model, answer_format, item.family)


def check_answer_format(answer_format: str) -> None:
    if answer_format not in ANSWER_FORMATS:
        raise UserError(f"answer format must be one of {', '.join(ANSWER_FORMATS)}, got '{answer_format}'")


def imperfect_teacher(items: list[Item], seed: int, flip_rate: float, answer_format: str = "lp") -> int:
    """Give a fraction of `items` the demonstration of a teacher with one systematic error.

    SFT data in this field is written by LLMs, and their classic mistake is a constraint in the
    wrong direction. This teacher, in `flip_rate` of the problems that state requirements
    (`>=` rows: "at least 12", "12 or more"), writes every requirement as an upper bound (`<=`)
    and states the optimum of that model (as code in a library's `answer_format`: the program
    that builds the flipped model). The reference model and answer stay correct: SFT
    imitates the teacher, the solver-based reward checks against the reference. Draws come from
    their own stream, so the problems do not depend on the rate. Returns how many it changed.
    """
    from solver_ppo.evaluation import read_model, solve_model
    from solver_ppo.evaluation.config import SolverLimits

    check_fraction("teacher's flip rate", flip_rate)
    check_answer_format(answer_format)
    rng = random.Random(f"{seed}-teacher")
    changed = 0
    for item in items:
        if " >= " not in item.reference_model or rng.random() >= flip_rate:
            continue
        flipped = item.reference_model.replace(" >= ", " <= ")
        if answer_format == "lp":
            result = solve_model(read_model(flipped), SolverLimits())
            item.demonstration = lp_answer(flipped, result.objective if result.status == "optimal" else result.status)
        else:
            item.demonstration = code_answer(flipped, answer_format, item.family)
        changed += 1
    return changed


def erring_teacher(items: list[Item], seed: int, rate: float, mix: dict[str, float], answer_format: str) -> Counter:
    """Give `rate` of the feasible `items` a pyscipopt demonstration with one of the error kinds of
    `solver_ppo.data.teacher_errors` (drawn by the shares of `mix`; a kind that cannot give its
    verdict on a problem is replaced by another drawn from the rest). The reference model and answer
    stay correct, as with `imperfect_teacher`. Draws come from their own stream. Returns how many
    demonstrations each kind wrote."""
    from solver_ppo.data.teacher_errors import FORMAT, flawed_answer

    check_fraction("teacher's error rate", rate)
    if rate and answer_format != FORMAT:
        raise UserError(f"teacher errors are written as {FORMAT} programs; give --answer-format {FORMAT} "
                        f"(got '{answer_format}')")
    rng = random.Random(f"{seed}-teacher-errors")
    written: Counter = Counter()
    for item in items:
        if item.answer == "infeasible" or rng.random() >= rate:
            continue
        kinds = dict(mix)
        while kinds:
            kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
            flawed = flawed_answer(kind, item.reference_model, float(item.answer), rng, item.family)
            if flawed is not None:
                item.demonstration = flawed
                written[kind] += 1
                break
            del kinds[kind]
    return written


# A second answer without a model: with rollout.end=done the policy says its previous model stands.
DONE_REPLY = "The model above stands."


def revision_demonstrations(items: list[Item], seed: int, fraction: float, answer_format: str = "lp",
                            workers: int = 2, done: bool = False) -> int:
    """Turn `fraction` of `items` into revision demonstrations: the teacher's answer (flawed where
    `imperfect_teacher` flipped it or `erring_teacher` wrote an error) becomes the first answer, the evaluation's real feedback on it
    follows (`solver_ppo.evaluation.feedback`: what the solver found, never the reference), and the SFT
    target is the reference answer. SFT then shows a starter what a revision after feedback looks
    like (fix a flawed model, restate a sound one). With `done`, a sound first answer (the
    teacher's, unflipped) is followed by DONE_REPLY instead of a restatement, which teaches the
    `rollout.end: done` episode end: revise only what is flawed. Draws come from their own stream.
    Returns how many items it changed."""
    from solver_ppo.evaluation import EvaluationConfig, EvaluatorPool, Reference, feedback_message

    check_fraction("revision fraction", fraction)
    check_answer_format(answer_format)
    rng = random.Random(f"{seed}-revision")
    chosen = [item for item in items if rng.random() < fraction]
    if not chosen:
        return 0
    firsts = [item.demonstration or (lp_answer(item.reference_model, item.answer) if answer_format == "lp"
                                     else code_answer(item.reference_model, answer_format, item.family))
              for item in chosen]
    # the reference is never read by the feedback; the pool wants one to score against. The searches
    # are bounded by SCIP nodes, so rebuilt data are the same; the wall-clock safety is set far above
    # what these small models need even on a loaded machine, so it never decides a message
    with EvaluatorPool(EvaluationConfig(feedback=True, workers=workers, feedback_seconds=60.0)) as pool:
        results = pool.score_many([(first, Reference.from_answer(item.answer, item.reference_model))
                                   for first, item in zip(firsts, chosen)])
    for item, first, result in zip(chosen, firsts, results):
        sound = item.demonstration is None  # the teacher's answer is the reference
        item.revision = {"answer": first, "feedback": feedback_message(result)}
        # the target: the done reply, or the reference (as code with a code answer format)
        item.demonstration = DONE_REPLY if done and sound else None
    return len(chosen)
