"""Reward server against in-process scoring, same answers, same machine, same run.

    .venv/bin/python tools/bench_reward_server.py [--answers 320] [--clients 16] [--workers 2]

1. In process: the honest answers through one EvaluatorPool's score_many (what `score` does).
2. Server: the same answers (1 and 2 alternate for --rounds rounds; medians are reported) through `serve-reward`'s /score, --batch answers per request
   (default 1) from --clients threads at once; answers/s, and each answer's latency (its request's).
3. Server with hostile answers: the same honest answers plus 10 % hostile ones (code that loops
   until its deadline, code that prints without end, garbage), latency of the honest ones.
Throughout 2 and 3 a thread polls /health every 0.2 s; its slowest reply is reported.
Last line: one JSON object (server_vs_in_process, health_max_latency_s, answers_per_s, p99_s_with_hostile).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.evaluation import EvaluationConfig, EvaluatorPool  # noqa: E402
from app.evaluation.config import CodeLimits  # noqa: E402
from app.integrations.scorer import reference_from_label  # noqa: E402

HOSTILE = [
    "```python\nimport pyscipopt\nwhile True:\n    pass\n```",
    "```python\nimport pyscipopt\nwhile True:\n    print('x' * 4096)\n```",
    "\x00\x01 garbage ```lp\nMaximize obj: x +\n``` ```lp\n",
]


def _samples() -> list[tuple[str, object, str | None]]:
    samples = ROOT / "app" / "evaluation" / "samples"
    problems = [json.loads(line) for line in (samples / "problems.jsonl").read_text().splitlines()]
    answers = [json.loads(line)["answer"] for line in (samples / "answers.jsonl").read_text().splitlines()]
    return [(a, p.get("answer"), p.get("reference_model")) for p, a in zip(problems, answers)]


_local = threading.local()


def _post(port: int, items: list[dict]) -> float:
    """One request, on the client thread's kept-alive connection (as an engine's HTTP client pool does)."""
    t0 = time.perf_counter()
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/score", body=json.dumps({"items": items}), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"/score answered {response.status}: {body[:200]!r}")
    return time.perf_counter() - t0


def _through_server(port: int, items: list[dict], clients: int, batch: int) -> tuple[float, list[float]]:
    """Wall seconds, and each answer's latency (its request's)."""
    requests = [items[k : k + batch] for k in range(0, len(items), batch)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        latencies = list(ex.map(lambda request: _post(port, request), requests))
    return time.perf_counter() - t0, [lat for request, lat in zip(requests, latencies) for _ in request]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--answers", type=int, default=320, help="honest answers (default 320)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--batch", type=int, default=1, help="answers per request (default 1; OpenRLHF's agent path sends 1, its batch path more)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="in-process and server runs, alternated; medians reported (default 3)")
    p.add_argument("--code-wall", type=float, default=2.0, help="evaluation.code.wall_s: a looping answer's deadline (default 2 s)")
    args = p.parse_args()

    base = _samples()
    honest = [base[k % len(base)] for k in range(args.answers)]
    n_hostile = max(1, args.answers // 9)  # 10 % of all answers
    config = EvaluationConfig(workers=args.workers, code=CodeLimits(wall_s=args.code_wall))

    in_process = EvaluatorPool(config)
    refs = [(a, reference_from_label(label, model)) for a, label, model in honest]
    in_process.score_many(refs[: len(base)])  # warm: sandbox servers, caches

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    in_times, server_times, lat = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "eval.yaml"
        cfg.write_text(f"evaluation:\n  workers: {args.workers}\n  code: {{wall_s: {args.code_wall}}}\n")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        server = subprocess.Popen([sys.executable, "-m", "app", "serve-reward", "--port", str(port), "--config", str(cfg)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        health: list[float] = []
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/health")
                conn.getresponse().read()
                conn.close()
                health.append(time.perf_counter() - t)
                stop.wait(0.2)

        try:
            for _ in range(300):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            items = [{"answer": a, "label": label, "reference_model": model} for a, label, model in honest]
            _through_server(port, items[: len(base)], args.clients, args.batch)  # warm, as in process
            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            for _ in range(args.rounds):  # alternated, so a change in the machine's load hits both sides alike
                t0 = time.perf_counter()
                in_process.score_many(refs)
                in_times.append(time.perf_counter() - t0)
                server_s, round_lat = _through_server(port, items, args.clients, args.batch)
                server_times.append(server_s)
                lat += round_lat
            hostile = [{"answer": HOSTILE[k % len(HOSTILE)], "label": 1} for k in range(n_hostile)]
            mixed = items + hostile
            order = sorted(range(len(mixed)), key=lambda k: (k * 7919) % len(mixed))  # hostile ones spread through the run
            mixed_s, mixed_lat = _through_server(port, [mixed[k] for k in order], args.clients, args.batch)
            honest_lat = [lat_k for k, lat_k in zip(order, mixed_lat) if k < len(items)]
            stop.set()
            poller.join()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
            in_process.close()

    in_rate, server_rate = len(honest) / statistics.median(in_times), len(honest) / statistics.median(server_times)
    print(f"{'':34} {'answers/s':>10} {'p50 s':>8} {'p99 s':>8}")
    print(f"{'in process (score_many), median':34} {in_rate:>10.1f} {'':>8} {'':>8}")
    print(f"{'server, honest, median':34} {server_rate:>10.1f} {statistics.median(lat):>8.3f} {_pct(lat, 0.99):>8.3f}")
    print(f"{f'server, + {n_hostile} hostile (honest only)':34} {len(mixed) / mixed_s:>10.1f} {statistics.median(honest_lat):>8.3f} {_pct(honest_lat, 0.99):>8.3f}")
    print(f"health: {len(health)} polls, slowest {max(health):.3f} s; {args.clients} clients, {args.batch} answers per request, "
          f"{args.workers} workers, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(json.dumps({"server_vs_in_process": round(server_rate / in_rate, 3), "health_max_latency_s": round(max(health), 4),
                      "answers_per_s": round(server_rate, 1), "p99_s_with_hostile": round(_pct(honest_lat, 0.99), 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
