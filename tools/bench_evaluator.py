"""Benchmark of the evaluation system: pool vs serial throughput, evaluator overhead, graph distance time.

    .venv/bin/python tools/bench_evaluator.py [--answers 1000] [--workers 2]

Prints a table; the last line is one JSON object with the headline figures. Targets (issue 2):
pool >= 1.8x serial on 2 cores, overhead median <= 5 ms, graph distance <= 1 s at 1,000 variables.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import app.evaluation.reward as reward_module  # noqa: E402
from app.evaluation import Constraint, EvaluationConfig, EvaluatorPool, Model, Reference, Variable, graph_distance, score_answer, to_lp_text  # noqa: E402

_in_scip = [0.0]  # wall seconds spent in solve_model (building the SCIP model + solving) for the last answer


def _timed_solve(model, limits, _solve=reward_module.solve_model):
    t = time.perf_counter()
    try:
        return _solve(model, limits)
    finally:
        _in_scip[0] = time.perf_counter() - t


def knapsack_lp(rng: random.Random, n: int, integer: bool) -> str:
    w = [rng.randint(5, 60) for _ in range(n)]
    v = [rng.randint(5, 90) for _ in range(n)]
    m = Model(
        [Variable(f"take[{j}]", "B" if integer else "C", 0.0, 1.0, float(v[j])) for j in range(n)],
        [Constraint("cap", {f"take[{j}]": float(w[j]) for j in range(n)}, "<=", float(sum(w) // 3)),
         Constraint("count", {f"take[{j}]": 1.0 for j in range(n)}, "<=", float(n // 2))],
        "max",
    )
    return to_lp_text(m)


def varied_answers(n: int, seed: int = 0) -> list[tuple[str, Reference]]:
    """Mostly models (LP and MILP, 5-40 variables), plus garbage, broken and doubled answers."""
    rng = random.Random(seed)
    items = []
    for k in range(n):
        kind = rng.random()
        if kind < 0.75:
            lp = knapsack_lp(rng, rng.randint(5, 40), integer=rng.random() < 0.5)
            items.append((f"Here is the model.\n```lp\n{lp}```\nThe optimal value is {rng.randint(1, 500)}.", Reference(float(rng.randint(1, 500)))))
        elif kind < 0.85:
            items.append(("I am not sure how to model this. " * rng.randint(1, 20), Reference(1.0)))
        elif kind < 0.95:
            items.append(("```lp\nMaximize\n x + y\nSubject To\n c: x + >= 2\nEnd\n```", Reference(2.0)))
        else:
            items.append(("```lp\nmax x\nst\n c: x <= 1\nend\n```\n```lp\nmax x\nst\n c: x <= 2\nend\n```", Reference(1.0)))
    return items


def graph_pair(n: int, seed: int = 0) -> tuple[Model, Model]:
    """A model with n variables, n rows of ~10 nonzeros, and a renamed copy with a few edits."""
    rng = random.Random(seed)
    variables = [Variable(f"x{j}", rng.choice("CIB"), 0.0, 1.0, float(rng.randint(-9, 9))) for j in range(n)]
    rows = [Constraint(f"c{i}", {f"x{j}": float(rng.randint(1, 20)) for j in rng.sample(range(n), min(10, n))}, "<=", float(rng.randint(10, 99))) for i in range(n)]
    a = Model(variables, rows, "max")
    b = copy.deepcopy(a)
    for c in rng.sample(b.constraints, max(1, n // 100)):
        c.rhs += 1.0
    names = {v.name: f"y{k}" for k, v in enumerate(b.variables)}
    b = Model([Variable(names[v.name], v.vtype, v.lb, v.ub, v.obj) for v in b.variables][::-1],
              [Constraint(c.name, {names[k]: x for k, x in c.coefs.items()}, c.sense, c.rhs) for c in b.constraints][::-1], "max")
    return a, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    config = EvaluationConfig(workers=args.workers)
    items = varied_answers(args.answers)

    # serial, in this process; per-answer overhead = wall time - SCIP's own solving time
    # and, second view, minus all the time inside solve_model (SCIP instance creation, model building, solve)
    reward_module.solve_model = _timed_solve
    overhead_ms, outside_scip_ms = [], []
    t0 = time.perf_counter()
    for answer, ref in items:
        s = time.perf_counter()
        r = score_answer(answer, ref, config)
        if r.status in ("optimal", "infeasible", "timelimit"):
            wall = time.perf_counter() - s
            overhead_ms.append((wall - r.solve_seconds) * 1000)
            outside_scip_ms.append((wall - _in_scip[0]) * 1000)
    serial_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    with EvaluatorPool(config) as pool:
        start_s = time.perf_counter() - t0
        pool.score_many(items[:10])  # warm
        t0 = time.perf_counter()
        pooled = pool.score_many(items)
        pool_s = time.perf_counter() - t0
    assert len(pooled) == len(items)

    print(f"{'measure':<44} {'value':>12}")
    print("-" * 57)
    print(f"{'answers scored':<44} {len(items):>12}")
    print(f"{'serial (one process), answers/s':<44} {len(items) / serial_s:>12.1f}")
    print(f"{f'pool ({args.workers} workers), answers/s':<44} {len(items) / pool_s:>12.1f}")
    print(f"{'pool speedup over serial':<44} {serial_s / pool_s:>12.2f}x")
    print(f"{'pool start (s, not in the speedup)':<44} {start_s:>12.2f}")
    print(f"{'evaluator overhead per solved answer, median ms':<44} {statistics.median(overhead_ms):>12.2f}")
    print(f"{'evaluator overhead, p90 ms':<44} {statistics.quantiles(overhead_ms, n=10)[-1]:>12.2f}")
    print(f"{'time outside solve_model per answer, median ms':<44} {statistics.median(outside_scip_ms):>12.2f}")
    graph_distance(*graph_pair(10, seed=1))  # warm (first call imports scipy.optimize)
    graph_s = {}
    for n in (10, 100, 1000, 10000):
        a, b = graph_pair(n, seed=n)
        t0 = time.perf_counter()
        d = graph_distance(a, b)
        graph_s[n] = time.perf_counter() - t0
        print(f"{f'graph distance, {n} vars (d={d:.2e}), s':<44} {graph_s[n]:>12.3f}")
    # headline overhead: our own work per answer (extraction, reading, matching, graph), i.e. the
    # answer's wall time minus the time inside solve_model; the stricter figure (minus only SCIP's
    # reported solving time, so SCIP instance creation counts as ours) is reported beside it
    print(json.dumps({"pool_speedup": round(serial_s / pool_s, 3), "overhead_ms_median": round(statistics.median(outside_scip_ms), 3),
                      "overhead_vs_scip_solving_ms_median": round(statistics.median(overhead_ms), 3),
                      "graph_seconds_1000": round(graph_s[1000], 4)}))


if __name__ == "__main__":
    main()
