"""Benchmark of the evaluation system: pool vs serial throughput, evaluator overhead, graph distance time.

    .venv/bin/python tools/bench_evaluator.py [--answers 1000] [--workers 2]

Prints a table; the last line is one JSON object with the headline figures. Targets:
pool >= 1.8x serial on 2 cores, overhead median <= 5 ms, graph distance <= 1 s at 1,000 variables.
Other processes on the machine take CPU from both sides unevenly: check the load average it
prints, and compare the CPU seconds (pool workers + parent vs serial) as well as the wall times.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import solver_ppo.evaluation.reward as reward_module  # noqa: E402
from solver_ppo.evaluation import Constraint, EvaluationConfig, EvaluatorPool, Model, Reference, Variable, graph_distance, score_answer, to_lp_text  # noqa: E402

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


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="serial/pool throughput rounds, alternating which goes first")
    args = parser.parse_args()
    config = EvaluationConfig(workers=args.workers)
    items = varied_answers(args.answers)
    load_start = os.getloadavg()[0]

    # Overhead, serial in this process: per solved answer, wall time minus SCIP's own solving time
    # (SCIP instance set-up and model loading count as the evaluator's overhead), and, second
    # view, minus all the time inside solve_model.
    reward_module.solve_model = _timed_solve
    overhead_ms, outside_scip_ms = [], []
    for answer, ref in items:
        s = time.perf_counter()
        r = score_answer(answer, ref, config)
        if r.status in ("optimal", "infeasible", "timelimit"):
            wall = time.perf_counter() - s
            overhead_ms.append((wall - r.solve_seconds) * 1000)
            outside_scip_ms.append((wall - _in_scip[0]) * 1000)
    reward_module.solve_model = _timed_solve.__defaults__[0]

    # Throughput: serial vs pool on the same answers, in alternating rounds (the load of other
    # processes drifts); wall seconds and CPU seconds of every process involved.
    t0 = time.perf_counter()
    with EvaluatorPool(config) as pool:
        start_s = time.perf_counter() - t0
        pool.score_many(items[:10])  # warm
        pids = [w["pid"] for w in pool.worker_info()]
        rounds = []
        for k in range(args.rounds):
            row = {}
            for mode in ("serial", "pool") if k % 2 == 0 else ("pool", "serial"):
                parent0, workers0, t0 = time.process_time(), [_cpu_seconds(p) for p in pids], time.perf_counter()
                if mode == "serial":
                    out = [score_answer(answer, ref, config) for answer, ref in items]
                else:
                    out = pool.score_many(items)
                row[mode] = time.perf_counter() - t0
                row[f"{mode}_parent_cpu"] = time.process_time() - parent0
                row[f"{mode}_cpu"] = row[f"{mode}_parent_cpu"] + sum(_cpu_seconds(p) - c for p, c in zip(pids, workers0))
                assert len(out) == len(items)
            row["load"] = os.getloadavg()[0]
            rounds.append(row)
        assert pool.replaced == 0
    speedups = [r["serial"] / r["pool"] for r in rounds]
    best_serial, best_pool = min(r["serial"] for r in rounds), min(r["pool"] for r in rounds)
    cpu_ratio = statistics.median(r["pool_cpu"] / r["serial_cpu"] for r in rounds)

    print(f"answers: {len(items)}, workers: {args.workers}, load average (1 min) at start: {load_start:.2f}, CPUs: {os.cpu_count()}")
    print("CPU s: user + system seconds; pool = its workers + the parent (parent share in brackets)")
    print(f"{'round':<6} {'serial s':>9} {'pool s':>9} {'speedup':>8} {'serial CPU s':>13} {'pool CPU s':>18} {'load':>6}")
    for k, r in enumerate(rounds):
        pool_cpu = f"{r['pool_cpu']:.2f} ({r['pool_parent_cpu']:.2f})"
        print(f"{k:<6} {r['serial']:>9.2f} {r['pool']:>9.2f} {r['serial'] / r['pool']:>7.2f}x {r['serial_cpu']:>13.2f} {pool_cpu:>18} {r['load']:>6.2f}")
    print()
    print(f"{'measure':<60} {'value':>12}")
    print("-" * 73)
    print(f"{'serial (one process), answers/s, best round':<60} {len(items) / best_serial:>12.1f}")
    print(f"{f'pool ({args.workers} workers), answers/s, best round':<60} {len(items) / best_pool:>12.1f}")
    print(f"{'pool speedup over serial, median of rounds':<60} {statistics.median(speedups):>11.2f}x")
    print(f"{'pool speedup, best round / best-vs-best':<60} {max(speedups):>6.2f}x/{best_serial / best_pool:.2f}x")
    print(f"{'pool CPU seconds / serial CPU seconds, median':<60} {cpu_ratio:>12.3f}")
    print(f"{'pool start (s, not in the speedup)':<60} {start_s:>12.2f}")
    print(f"{'overhead per solved answer (wall - SCIP solving), median ms':<60} {statistics.median(overhead_ms):>12.2f}")
    print(f"{'  same, p90 ms':<60} {statistics.quantiles(overhead_ms, n=10)[-1]:>12.2f}")
    print(f"{'time outside solve_model per answer, median ms':<60} {statistics.median(outside_scip_ms):>12.2f}")
    graph_distance(*graph_pair(10, seed=1))  # warm (first call imports scipy.optimize)
    graph_s = {}
    for n in (10, 100, 1000, 10000):
        a, b = graph_pair(n, seed=n)
        t0 = time.perf_counter()
        d = graph_distance(a, b)
        graph_s[n] = time.perf_counter() - t0
        print(f"{f'graph distance, {n} vars (d={d:.2e}), s':<60} {graph_s[n]:>12.3f}")
    print(json.dumps({"pool_speedup": round(statistics.median(speedups), 3), "pool_speedup_best_round": round(max(speedups), 3),
                      "overhead_ms_median": round(statistics.median(overhead_ms), 3),
                      "outside_solve_model_ms_median": round(statistics.median(outside_scip_ms), 3),
                      "graph_seconds_1000": round(graph_s[1000], 4), "load_average_start": round(load_start, 2)}))


if __name__ == "__main__":
    main()
