"""What `evaluation.feedback=true` adds to scoring one answer: the sample answers scored in this
process with feedback off and on, alternating answer by answer so that both see the same machine.

    .venv/bin/python tools/bench_feedback.py [--rounds 200]

Prints, per sample answer, its status and the median milliseconds of `score_answer` off and on
(the extra is SCIP's infeasible-subset search, the unbounded ray's re-solve, or reading the
nonzero values), then the mean over the answers and the ratio on / off. The last line is one JSON
object with those figures. Code answers are not in the samples; their feedback is the capture's
own reason, so it costs nothing more.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solver_ppo.evaluation import EvaluationConfig, Reference, score_answer  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "app" / "evaluation" / "samples"


def samples() -> list[tuple[str, str, Reference]]:
    """(id, answer, reference) of app/evaluation/samples, paired by id."""
    problems = {row["id"]: row for row in map(json.loads, (SAMPLES / "problems.jsonl").read_text().splitlines())}
    out = []
    for row in map(json.loads, (SAMPLES / "answers.jsonl").read_text().splitlines()):
        problem = problems[row["id"]]
        out.append((row["id"], row["answer"], Reference.from_answer(problem.get("answer"), problem.get("reference_model"))))
    return out


def timed(answer: str, reference: Reference, config: EvaluationConfig) -> tuple[float, str]:
    start = time.perf_counter()
    result = score_answer(answer, reference, config)
    return time.perf_counter() - start, result.status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="times each answer is scored with each setting")
    args = parser.parse_args()
    items = samples()
    off, on = EvaluationConfig(), EvaluationConfig(feedback=True)
    for _, answer, reference in items:  # warm up: reference models solved and cached, SCIP instance created
        timed(answer, reference, off)
        timed(answer, reference, on)
    times: dict[str, dict[str, list[float]]] = {i: {"off": [], "on": []} for i, _, _ in items}
    statuses = {}
    for r in range(args.rounds):
        for item_id, answer, reference in items:
            order = (("off", off), ("on", on)) if r % 2 == 0 else (("on", on), ("off", off))
            for name, config in order:
                seconds, statuses[item_id] = timed(answer, reference, config)
                times[item_id][name].append(seconds)
    print(f"load average {os.getloadavg()[0]:.2f}, {args.rounds} rounds, median ms per answer")
    print(f"{'answer':<16} {'status':<12} {'off':>8} {'on':>8} {'extra':>8}")
    print("-" * 56)
    medians = {}
    for item_id, _, _ in items:
        a, b = (statistics.median(times[item_id][k]) * 1e3 for k in ("off", "on"))
        medians[item_id] = (a, b)
        print(f"{item_id[:16]:<16} {statuses[item_id]:<12} {a:8.3f} {b:8.3f} {b - a:+8.3f}")
    mean_off = statistics.mean(a for a, _ in medians.values())
    mean_on = statistics.mean(b for _, b in medians.values())
    print("-" * 56)
    print(f"{'mean':<29} {mean_off:8.3f} {mean_on:8.3f} {mean_on - mean_off:+8.3f}   ratio on/off {mean_on / mean_off:.2f}x")
    print(json.dumps({"rounds": args.rounds, "mean_ms_off": round(mean_off, 4), "mean_ms_on": round(mean_on, 4),
                      "extra_ms": round(mean_on - mean_off, 4), "ratio": round(mean_on / mean_off, 3),
                      "by_answer": {i: {"status": statuses[i], "off_ms": round(a, 4), "on_ms": round(b, 4)} for i, (a, b) in medians.items()}}))


if __name__ == "__main__":
    main()
