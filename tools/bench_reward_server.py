"""Reward server against in-process scoring, same answers, same machine, same run.

    .venv/bin/python tools/bench_reward_server.py [--answers 320] [--clients 16] [--workers 2]

1. In process: the honest answers through one EvaluatorPool's score_many (what `score` does).
2. Server: the same answers (1 and 2 alternate for --rounds rounds; medians are reported) through `serve-reward`'s /score, --batch answers per request
   (default 1) from --clients threads at once, each on a kept-alive connection; answers/s, and each
   answer's latency (its request's). --openrlhf: as OpenRLHF 0.11's remote reward client sends them
   instead (openrlhf/utils/agent.py, SingleTurnAgentExecutor.execute -> _fetch_rewards_via_http):
   one query (prompt + response) per POST /get_reward, each on a new connection (a new
   aiohttp.ClientSession per request).
3. Server with hostile answers: the same honest answers plus 10 % hostile ones (code that loops
   until its deadline, code that prints without end, garbage), latency of the honest ones.
Throughout 2 and 3 a thread polls /health every 0.2 s; its slowest reply is reported.
CPU per answer in 1 and 2 (from /proc): this process (the in-process pool's thread; the client
threads), the server process (and its event loop thread: the rest is the pool's thread), the
workers (and their sandboxes), so the cost of HTTP shows beside the cost of scoring.
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

from solver_ppo.evaluation import EvaluationConfig, EvaluatorPool  # noqa: E402
from solver_ppo.evaluation.config import CodeLimits  # noqa: E402
from solver_ppo.integrations.scorer import reference_from_label  # noqa: E402
from load_reward_server import tree, wait_for_port  # noqa: E402  (this folder: tools/)

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
_PROMPT = "<|user|>Write the model as LP text and solve it.<|assistant|>"


def _openrlhf_body(items: list[dict]) -> dict:
    """OpenRLHF's /get_reward payload for these answers: query = prompt + response, the label
    carrying the reference model where there is one."""
    labels = [item["label"] if item.get("reference_model") is None else json.dumps({"answer": item["label"], "reference_model": item["reference_model"]})
              for item in items]
    return {"query": [_PROMPT + item["answer"] for item in items], "prompts": [_PROMPT] * len(items), "labels": labels}


def _post(port: int, items: list[dict], openrlhf: bool = False) -> float:
    """One request: on the client thread's kept-alive connection (an HTTP client pool), or with
    `openrlhf` as OpenRLHF sends it (/get_reward, a new connection each time)."""
    t0 = time.perf_counter()
    conn = None if openrlhf else getattr(_local, "conn", None)
    if conn is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        if not openrlhf:
            _local.conn = conn
    path, body = ("/get_reward", _openrlhf_body(items)) if openrlhf else ("/score", {"items": items})
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    reply = response.read()
    if openrlhf:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"{path} answered {response.status}: {reply[:200]!r}")
    return time.perf_counter() - t0


def _through_server(port: int, items: list[dict], clients: int, batch: int, openrlhf: bool = False) -> tuple[float, list[float]]:
    """Wall seconds, and each answer's latency (its request's)."""
    requests = [items[k : k + batch] for k in range(0, len(items), batch)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        latencies = list(ex.map(lambda request: _post(port, request, openrlhf), requests))
    return time.perf_counter() - t0, [lat for request, lat in zip(requests, latencies) for _ in request]


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pids: set[int], stat: str = "/proc/{}/stat") -> float:
    """User + system CPU seconds of these processes (all their threads), those still alive."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(stat.format(pid)).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


class _CpuSplit:
    """CPU seconds spent by this process, the server process and the pools' workers over a span."""

    def __init__(self, server_pid: int):
        self.server_pid = server_pid
        self.spent = {"this": 0.0, "server": 0.0, "server_loop": 0.0, "server_workers": 0.0, "workers": 0.0}

    def _now(self) -> dict[str, float]:
        server_tree = set(tree(self.server_pid))
        mine = set(tree(os.getpid())) - server_tree - {os.getpid()}
        return {"this": _cpu_s({os.getpid()}), "server": _cpu_s({self.server_pid}),
                "server_loop": _cpu_s({self.server_pid}, "/proc/{0}/task/{0}/stat"),  # its main thread: aiohttp's event loop
                "server_workers": _cpu_s(server_tree - {self.server_pid}), "workers": _cpu_s(mine)}

    def measure(self, run):
        before = self._now()
        out = run()
        after = self._now()
        for key in self.spent:
            self.spent[key] += after[key] - before[key]
        return out


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--answers", type=int, default=320, help="honest answers (default 320)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--batch", type=int, default=1, help="answers per request (default 1, as OpenRLHF 0.11 sends)")
    p.add_argument("--openrlhf", action="store_true", help="send as OpenRLHF 0.11's remote reward client: POST /get_reward, a new connection per request")
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
            wait_for_port(port, 300)
            items = [{"answer": a, "label": label, "reference_model": model} for a, label, model in honest]
            _through_server(port, items[: len(base)], args.clients, args.batch, args.openrlhf)  # warm, as in process
            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            cpu_in, cpu_server = _CpuSplit(server.pid), _CpuSplit(server.pid)
            for _ in range(args.rounds):  # alternated, so a change in the machine's load hits both sides alike
                t0 = time.perf_counter()
                cpu_in.measure(lambda: in_process.score_many(refs))
                in_times.append(time.perf_counter() - t0)
                server_s, round_lat = cpu_server.measure(lambda: _through_server(port, items, args.clients, args.batch, args.openrlhf))
                server_times.append(server_s)
                lat += round_lat
            hostile = [{"answer": HOSTILE[k % len(HOSTILE)], "label": 1} for k in range(n_hostile)]
            mixed = items + hostile
            order = sorted(range(len(mixed)), key=lambda k: (k * 7919) % len(mixed))  # hostile ones spread through the run
            mixed_s, mixed_lat = _through_server(port, [mixed[k] for k in order], args.clients, args.batch, args.openrlhf)
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
    per = 1000 / (len(honest) * args.rounds)
    cin, cserver = {k: v * per for k, v in cpu_in.spent.items()}, {k: v * per for k, v in cpu_server.spent.items()}
    print(f"CPU ms per answer, in process: pool thread {cin['this']:.3f}, workers {cin['workers']:.3f}; through the server: "
          f"client threads {cserver['this']:.3f}, server process {cserver['server']:.3f} (event loop thread {cserver['server_loop']:.3f}), workers {cserver['server_workers']:.3f}")
    print(f"health: {len(health)} polls, slowest {max(health):.3f} s; {args.clients} clients, {args.batch} answers per request"
          f"{' (OpenRLHF client: /get_reward, a new connection each)' if args.openrlhf else ''}, "
          f"{args.workers} workers, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(json.dumps({"server_vs_in_process": round(server_rate / in_rate, 3), "health_max_latency_s": round(max(health), 4),
                      "answers_per_s": round(server_rate, 1), "p99_s_with_hostile": round(_pct(honest_lat, 0.99), 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
