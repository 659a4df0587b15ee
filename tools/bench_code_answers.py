"""Benchmark of code answers: the sandboxed pool vs the field's practice (one `python answer.py`
subprocess per answer), same answers, same number of workers, same run.

    nice .venv/bin/python tools/bench_code_answers.py [--answers 1000] [--workers 2] [--serial 200] [--sandbox audit]

The answers are the synthetic problem families rendered as programs in every supported library
(app/data/code_answers.py), plus broken ones (syntax errors, exceptions, no solve call, a
printed number without a model). Ours: EvaluatorPool.score_many (sandbox, capture, SCIP solve,
answer match, graph distance against the reference model). Theirs: each answer written to a
file and run with `python answer.py` (the library solves it with its own solver), its output
kept, nothing else checked. The overhead per answer is measured serially on `--serial`
answers: the time score_answer takes beyond SCIP's own solve (building the SCIP model and
solving it), and the part of it spent in the sandbox (the program's own run included). Wall
time on a loaded machine is mostly waiting for a core, so the CPU time beyond SCIP is reported
beside it: this process's (minus SCIP's) plus the sandbox servers' and their reaped runners'
(per answer, mean over the serial run). Targets: >= 5x answers/s, overhead median (wall)
<= 15 ms. Prints a table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import solver_ppo.evaluation.reward as reward_module  # noqa: E402
from solver_ppo.data.code_answers import CODE_FORMATS, code_answer  # noqa: E402
from solver_ppo.data.synthetic import generate  # noqa: E402
from solver_ppo.evaluation import EvaluationConfig, EvaluatorPool, Reference, extract_model, score_answer  # noqa: E402
from solver_ppo.evaluation.capture import detect_library  # noqa: E402
from solver_ppo.evaluation.sandbox import _sandboxes as sandboxes  # noqa: E402

# Libraries whose own solver runs in the subprocess baseline (pyomo needs an external solver
# binary, which a pip install does not bring: its answers run in ours only).
BASELINE_LIBRARIES = tuple(lib for lib in CODE_FORMATS if lib != "pyomo")

BROKEN = [
    lambda code: code.replace("import", "improt", 1),  # syntax error
    lambda code: code.replace("\n", "\nundefined_name + 1\n", 3),  # exception before the solve
    lambda code: "\n".join(line for line in code.splitlines() if ".solve" not in line and ".optimize" not in line
                           and "linprog(" not in line and "SolverFactory" not in line),  # no solve call
    lambda code: code.split("\n")[0] + "\nprint('Optimal value: 42')\n",  # a printed number, no model
]


def answers(n: int, seed: int) -> list[tuple[str, Reference, str]]:
    """(answer, reference, library): ~90 % correct programs over the families and libraries, the rest broken."""
    rng = random.Random(seed)
    items = generate(n, seed, difficulty="medium")
    out = []
    for k, item in enumerate(items):
        library = CODE_FORMATS[k % len(CODE_FORMATS)]
        text = code_answer(item.reference_model, library)
        if rng.random() < 0.1:
            body = text.removeprefix("```python\n").removesuffix("```")
            text = f"```python\n{rng.choice(BROKEN)(body)}\n```"
        out.append((text, Reference.from_answer(item.answer, item.reference_model), library))
    return out


def run_subprocess(code: str, timeout: float) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "answer.py")
        with open(path, "w") as f:
            f.write(code)
        t = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, path], cwd=d, capture_output=True, text=True, timeout=timeout)
            out = done.stdout
        except subprocess.TimeoutExpired:
            out = "timeout"
        return time.perf_counter() - t, out


_in_scip = [0.0, 0.0]  # wall and CPU seconds in SCIP (building its model and solving) for the last answer
_in_sandbox = [0.0]  # seconds in the sandbox (the program's run and its capture, round trip) for the last answer


def _timed_solve(model, limits, _solve=reward_module.solve_model):
    t, c = time.perf_counter(), time.process_time()
    try:
        return _solve(model, limits)
    finally:
        _in_scip[0], _in_scip[1] = time.perf_counter() - t, time.process_time() - c


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and of its children it has reaped (utime, stime, cutime, cstime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _timed_run_code(code, library, config, _run=reward_module.run_code):
    t = time.perf_counter()
    try:
        return _run(code, library, config)
    finally:
        _in_sandbox[0] = time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--serial", type=int, default=200, help="answers for the serial overhead measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sandbox", default="auto", choices=["strict", "auto", "audit"], help="evaluation.sandbox")
    args = parser.parse_args()

    items = answers(args.answers, args.seed)
    config = EvaluationConfig(workers=args.workers, sandbox=args.sandbox)
    load0 = os.getloadavg()[0]

    # ours: the pool (its workers start their sandbox servers on a first, warm-up batch)
    with EvaluatorPool(config) as pool:
        pool.score_many([(a, r) for a, r, _ in items[: 2 * args.workers]])
        t = time.perf_counter()
        results = pool.score_many([(a, r) for a, r, _ in items])
        ours_s = time.perf_counter() - t
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    correct = [r.matched for r, (_, _, lib) in zip(results, items)]

    # theirs: one `python answer.py` per answer, the same number of workers
    baseline = [(a.removeprefix("```python\n").removesuffix("```"), lib) for a, _, lib in items if lib in BASELINE_LIBRARIES]
    t = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as ex:
        timings = list(ex.map(lambda item: run_subprocess(item[0], config.limits.wall_limit_s)[0], baseline))
    theirs_s = time.perf_counter() - t
    ours_per_s = len(items) / ours_s
    theirs_per_s = len(baseline) / theirs_s

    # overhead: serial score_answer in this process, minus the time inside SCIP
    reward_module.solve_model = _timed_solve
    reward_module.run_code = _timed_run_code
    overhead_ms, sandbox_ms, own_cpu_ms, per_library = [], [], [], {}
    code_of = {answer: extract_model(answer) for answer, _, _ in items[: args.serial]}
    first_of_each = {detect_library(code_of[a].text): (a, ref) for a, ref, _ in reversed(items[: args.serial]) if code_of[a].fmt == "python"}
    for answer, ref in first_of_each.values():  # starts this process's sandbox server for each library
        score_answer(answer, ref, config)
    servers = [box._process.pid for box in sandboxes.values() if box._process is not None]
    time.sleep(0.5)  # the servers reap the runners of the warm-up answers while idle
    server_cpu0 = sum(map(_tree_cpu_s, servers))
    for answer, ref, library in items[: args.serial]:
        _in_scip[:] = [0.0, 0.0]
        _in_sandbox[0] = 0.0
        t, c = time.perf_counter(), time.process_time()
        score_answer(answer, ref, config)
        ms = (time.perf_counter() - t - _in_scip[0]) * 1000
        own_cpu_ms.append((time.process_time() - c - _in_scip[1]) * 1000)
        overhead_ms.append(ms)
        sandbox_ms.append(_in_sandbox[0] * 1000)
        per_library.setdefault(library, []).append((ms, _in_sandbox[0] * 1000))

    time.sleep(0.5)
    server_cpu_ms = (sum(map(_tree_cpu_s, servers)) - server_cpu0) * 1000 / args.serial  # the sandbox's processes, per answer
    cpu_ms = statistics.mean(own_cpu_ms) + server_cpu_ms

    print(f"load average at start: {load0:.2f}, cores: {os.cpu_count()}, workers: {args.workers}, sandbox: {args.sandbox}")
    print(f"{'path':<42}{'answers':>9}{'seconds':>10}{'answers/s':>11}")
    print(f"{'ours: sandboxed pool (capture + SCIP + graph)':<42}{len(items):>9}{ours_s:>10.2f}{ours_per_s:>11.1f}")
    print(f"{'field: python answer.py per answer':<42}{len(baseline):>9}{theirs_s:>10.2f}{theirs_per_s:>11.1f}")
    print(f"statuses (ours): {dict(sorted(statuses.items()))}; matched the reference: {sum(correct)}/{len(items)}")
    print(f"subprocess per answer: median {statistics.median(timings) * 1000:.0f} ms")
    print(f"{'beyond SCIP (serial), ms':<34}{'median':>8}{'p90':>8}{'of it in the sandbox':>22}")
    rows = [(lib, [o for o, _ in v], [s for _, s in v]) for lib, v in sorted(per_library.items())]
    for library, total, sandbox in rows + [("all", overhead_ms, sandbox_ms)]:
        p90 = sorted(total)[int(0.9 * (len(total) - 1))]
        print(f"  {library:<32}{statistics.median(total):>8.1f}{p90:>8.1f}{statistics.median(sandbox):>22.1f}")
    print(f"CPU beyond SCIP per answer (serial, mean): {cpu_ms:.1f} ms = {statistics.mean(own_cpu_ms):.1f} in this process "
          f"(median {statistics.median(own_cpu_ms):.1f}) + {server_cpu_ms:.1f} in the sandbox servers and their runners")
    print(json.dumps({"vs_subprocess": round(ours_per_s / theirs_per_s, 2), "overhead_ms_median": round(statistics.median(overhead_ms), 2),
                      "sandbox_ms_median": round(statistics.median(sandbox_ms), 2), "overhead_cpu_ms_mean": round(cpu_ms, 2)}))


if __name__ == "__main__":
    main()
