"""Load and faults against `serve-reward` on localhost; exits 1 if any check fails.

    .venv/bin/python tools/load_reward_server.py [--answers 20000] [--clients 16] [--workers 2]

Clients send the answers in requests of 1 to 8 (honest LP and code answers mixed with a hostile
catalogue: infinite loops, memory and fork bombs, endless output, garbage), each answer once,
while a chaos thread sends malformed, oversized and wrong-token requests and requests it abandons
mid-way, and one pool worker and one sandbox server are killed with SIGKILL (at a third and at two
thirds of the run). Checks: every answer gets exactly one row, equal to what in-process scoring
gives it (less solve_seconds), except the answers that were running in a killed process (status
error or sandbox_error, counted) and hostile answers whose in-process rows varied, which must keep
what does not vary (whether SCIP solved a model, a reward below 0.5); every chaos request gets its
4xx, and each abandoned request has answers dropped unrun (/metrics); /health answers every poll
within 1 s; after SIGTERM no process of the server's tree, sandbox directory or growth of its file
descriptors is left, and the server's memory grew by at most --rss-growth-mb over the run. A run
past --timeout-s kills the server's processes and fails. CI runs it (.ci/run).
Last lines: the checks that failed, if any, then one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import secrets
import shutil
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
from solver_ppo.evaluation.cli_score import result_row  # noqa: E402
from solver_ppo.evaluation.config import CodeLimits  # noqa: E402
from solver_ppo.integrations.scorer import reference_from_label  # noqa: E402

SCIP_CODE = """```python
import pyscipopt
m = pyscipopt.Model()
x = m.addVar(ub=3)
y = m.addVar()
m.addCons(x + y <= 4)
m.addCons(x + 3 * y <= 6)
m.setObjective(3 * x + 2 * y, "maximize")
m.optimize()
```"""
HOSTILE = {
    "loop": "```python\nimport pyscipopt\nwhile True:\n    pass\n```",
    "memory": "```python\nimport pyscipopt\nblocks = []\nwhile True:\n    blocks.append(bytearray(64 * 2**20))\n```",
    "fork": "```python\nimport pyscipopt, os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n```",
    "output": "```python\nimport pyscipopt\nwhile True:\n    print('x' * 65536)\n```",
    "garbage": "\x00\xff```lp\nMaximize obj: x +\n```\n```lp\nMinimize\n",
}


def catalogue() -> list[tuple[str, str, object, str | None]]:
    """(kind, answer, label, reference_model): the samples' answers, a solver-code answer, the hostile ones."""
    samples = ROOT / "app" / "evaluation" / "samples"
    problems = [json.loads(line) for line in (samples / "problems.jsonl").read_text().splitlines()]
    answers = [json.loads(line)["answer"] for line in (samples / "answers.jsonl").read_text().splitlines()]
    out = [("honest", a, p.get("answer"), p.get("reference_model")) for p, a in zip(problems, answers)]
    out.append(("honest", SCIP_CODE, 11, None))
    out += [(kind, text, 1, None) for kind, text in HOSTILE.items()]
    return out


class Client:
    def __init__(self, port: int, token: str):
        self.port, self.token = port, token

    def post(self, path: str, body: bytes, token: str | None = None, timeout: float = 300.0) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json", "Authorization": f"Bearer {token or self.token}"})
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            conn.close()

    def metric(self, name: str) -> float:
        """One counter or gauge of /metrics (summed over its labels)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {self.token}"})
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{"))


def tree(root: int) -> dict[int, str]:
    """pid -> command line of `root` and all its descendants (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        kids = [c for c, p in parents.items() if p == pid and c not in found]
        found.update(kids)
        frontier += kids
    out = {}
    for pid in found:
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            pass
    return out


def wait_for_port(port: int, tries: int, pause_s: float = 0.1) -> None:
    """Until the server at 127.0.0.1:`port` accepts a connection (at most `tries` attempts)."""
    for _ in range(tries):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(pause_s)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--answers", type=int, default=20000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--hostile", type=float, default=0.02, help="share of hostile answers (default 2 %%; each holds a worker up to --code-wall)")
    p.add_argument("--code-wall", type=float, default=1.0, help="evaluation.code.wall_s (default 1 s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rss-growth-mb", type=float, default=20.0, help="most the server's RSS may grow from warm-up to the end (default 20 MB)")
    p.add_argument("--timeout-s", type=float, default=1500.0, help="past this the server's processes are killed and the run fails (default 1500 s)")
    args = p.parse_args()
    rng = random.Random(args.seed)
    cat = catalogue()
    honest = [c for c in cat if c[0] == "honest"]
    hostile = [c for c in cat if c[0] != "honest"]
    plan = [rng.choice(hostile) if rng.random() < args.hostile else rng.choice(honest) for _ in range(args.answers)]
    config = EvaluationConfig(workers=args.workers, code=CodeLimits(wall_s=args.code_wall))

    with EvaluatorPool(config) as pool:  # what each catalogue entry scores in process (hostile ones twice: they must be stable)
        expected = [result_row(r) for r in pool.score_many([(a, reference_from_label(label, m)) for _, a, label, m in cat])]
        again = [result_row(r) for r in pool.score_many([(a, reference_from_label(label, m)) for _, a, label, m in cat])]
    unstable = [cat[k][0] for k in range(len(cat)) if _strip(expected[k]) != _strip(again[k])]
    # a hostile answer must score below 0.5 both times, its steady part the same (its status may vary)
    unsteady = [kind for (kind, *_), first, second in zip(cat, expected, again)
                if kind != "honest" and not (steady_part(first) == steady_part(second) and first["reward"] < 0.5)]

    token = secrets.token_urlsafe(24)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp())
    server_tmp = tmp / "tmp"  # the server's TMPDIR: what its sandboxes leave behind shows here alone
    server_tmp.mkdir()
    cfg = tmp / "eval.yaml"
    cfg.write_text(f"evaluation:\n  workers: {args.workers}\n  code: {{wall_s: {args.code_wall}}}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SOLVER_PPO_REWARD_TOKEN": token, "TMPDIR": str(server_tmp)}
    log = open(tmp / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "app", "serve-reward", "--port", str(port), "--config", str(cfg), "--max-items", "64"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    code = 1
    try:
        code = _drive(args, rng, server, port, token, plan, cat, expected, unstable, unsteady, server_tmp)
    finally:  # whatever failed above: nothing of the server stays running
        if server.poll() is None:
            _kill_tree(server.pid)
        server.wait()
        log.close()
        if code != 0:
            print("server's output (its last 2,000 characters):", (tmp / "server.log").read_text(errors="replace")[-2000:], sep="\n")
        shutil.rmtree(tmp, ignore_errors=True)
    return code


def _strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("solve_seconds", "id")}


SOLVER_STATUSES = ("optimal", "infeasible", "unbounded", "inf_or_unbd", "timelimit")


def steady_part(row: dict) -> tuple[str, bool]:
    """What a hostile answer's row keeps from run to run even when its status does not (a memory bomb
    is `memory` or `killed` by timing): whether SCIP solved a model at all, and a reward below 0.5."""
    return ("solved" if row["status"] in SOLVER_STATUSES else "refused", row["reward"] < 0.5)


def compare_rows(rows: dict[int, list[dict]], plan: list, index: dict[str, int], expected: list[dict], unstable: list[str]) -> tuple[int, list]:
    """(answers hit by the kills, rows that differ from in-process scoring as (id, kind, status, wanted status)).
    A row equals its in-process row; or it was running in a killed process (status error or
    sandbox_error saying so); or its kind varied in process and it keeps that kind's steady part."""
    killed, wrong = 0, []
    for i, got in rows.items():
        want = expected[index[plan[i][1]]]
        if _strip(got[0]) == _strip(want):
            continue
        if got[0]["status"] in ("error", "sandbox_error") and ("died" in got[0]["reason"] or "sandbox server failed" in got[0]["reason"]):
            killed += 1
        elif plan[i][0] != "honest" and plan[i][0] in unstable and steady_part(got[0]) == steady_part(want) and got[0]["reward"] < 0.5:
            continue
        else:
            wrong.append((i, plan[i][0], got[0]["status"], want["status"]))
    return killed, wrong


CHAOS_CODES = {"malformed": 400, "oversized": 413, "wrong_token": 401, "bad_label": 422}


def chaos_ok(chaos: dict[str, list[int]]) -> bool:
    """Every kind of chaos request was sent and each got its 4xx; each abandoned request had at least
    one of its answers dropped unrun (`chaos["abandoned"]` holds how many each one had)."""
    sent = all(chaos.get(name) for name in (*CHAOS_CODES, "abandoned"))
    return sent and all(c == CHAOS_CODES[name] for name in CHAOS_CODES for c in chaos[name]) and min(chaos["abandoned"]) >= 1


def _kill_tree(root: int) -> None:
    for pid in tree(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _drive(args, rng: random.Random, server: subprocess.Popen, port: int, token: str, plan: list, cat: list, expected: list[dict],
           unstable: list[str], unsteady: list[str], server_tmp: Path) -> int:
    """The run against the started server, and its checks: 0 if all pass."""
    index = {a: k for k, (_, a, _, _) in enumerate(cat)}
    client = Client(port, token)
    wait_for_port(port, 600)
    client.post("/score", json.dumps({"items": [{"answer": a, "label": label, "reference_model": m} for _, a, label, m in cat]}).encode())  # warm
    fds0, rss0 = len(os.listdir(f"/proc/{server.pid}/fd")), rss_mb(server.pid)

    rows: dict[int, list[dict]] = {}
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    done = [0]
    batches, k = [], 0
    while k < len(plan):
        n = rng.randint(1, 8)
        batches.append(list(range(k, min(k + n, len(plan)))))
        k += n

    def send(batch: list[int]) -> None:
        items = [{"id": i, "answer": plan[i][1], "label": plan[i][2], "reference_model": plan[i][3]} for i in batch]
        t0 = time.perf_counter()
        try:
            status, body = client.post("/score", json.dumps({"items": items}).encode())
        except (OSError, http.client.HTTPException, ValueError) as err:  # refused, reset, timed out, not JSON
            status, body = -1, f"{type(err).__name__}: {err}"
        latency = time.perf_counter() - t0
        with lock:
            if status != 200:
                failures.append(f"batch {batch[0]}: HTTP {status} {body}"[:300])
                return
            latencies.append(latency)
            for row in body["rows"]:
                rows.setdefault(row["id"], []).append(row)
            done[0] += len(batch)

    health: list[float] = []
    health_fail: list[str] = []
    chaos: dict[str, list[int]] = {}
    kills: list[str] = []
    stop = threading.Event()

    def poll_health() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                ok = conn.getresponse().status == 200
                conn.close()
                health.append(time.perf_counter() - t)
                if not ok:
                    health_fail.append("status")
            except OSError as err:
                health_fail.append(str(err))
            stop.wait(0.2)

    def run_chaos() -> None:
        item = {"answer": cat[0][1], "label": cat[0][2], "reference_model": cat[0][3]}
        while not stop.is_set():
            for name, body, token_used in (("malformed", b"{not json", None), ("oversized", json.dumps({"items": [item] * 65}).encode(), None),
                                           ("wrong_token", json.dumps({"items": [item]}).encode(), "x" * 24),
                                           ("bad_label", json.dumps({"items": [{"answer": "a", "label": "twelve"}]}).encode(), None)):
                try:
                    chaos.setdefault(name, []).append(client.post("/score", body, token=token_used, timeout=30)[0])
                except OSError as err:
                    chaos.setdefault(name, []).append(-1)
                    failures.append(f"{name}: {err}")
            dropped = client.metric("solver_answers_dropped_total")
            conn = socket.create_connection(("127.0.0.1", port))  # a client that goes away mid-request
            payload = json.dumps({"items": [{"answer": HOSTILE["loop"], "label": 1}] * 4}).encode()
            conn.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer " + token.encode()
                         + b"\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
            stop.wait(0.3)
            conn.close()
            for _ in range(50):  # its answers that no worker took are dropped once the server sees the connection gone
                time.sleep(0.1)
                if (now := client.metric("solver_answers_dropped_total")) > dropped:
                    break
            chaos.setdefault("abandoned", []).append(int(now - dropped))
            stop.wait(1.0)

    def killer() -> None:
        for at, what in ((1 / 3, "worker"), (2 / 3, "sandbox")):
            while not stop.is_set() and done[0] < at * len(plan):
                stop.wait(0.2)
            for _ in range(50):  # the process found may exit before the signal (a sandbox server being replaced): look again
                procs = tree(server.pid)
                if what == "worker":  # forked by the pool's forkserver: a child of the process running multiprocessing.forkserver
                    servers = [pid for pid, cmd in procs.items() if "forkserver" in cmd]
                    targets = [pid for pid in procs if servers and _parent(pid) in servers]
                else:
                    # a sandbox server, not one of its runners (forked from it, with its command line)
                    targets = [pid for pid, cmd in procs.items() if "sandbox import serve" in cmd and "sandbox import serve" not in procs.get(_parent(pid), "")]
                try:
                    os.kill(targets[0], signal.SIGKILL)
                except (IndexError, ProcessLookupError):
                    stop.wait(0.1)
                    continue
                kills.append(f"{what} {targets[0]} at {done[0]} answers")
                break
            else:
                kills.append(f"{what}: none found")

    def watchdog() -> None:  # a hung server fails the run instead of hanging it: its clients then get errors at once
        if not stop.wait(args.timeout_s):
            failures.append(f"the run passed --timeout-s {args.timeout_s:g} s at {done[0]} answers; the server's processes were killed")
            _kill_tree(server.pid)

    threads = [threading.Thread(target=f, daemon=True) for f in (poll_health, run_chaos, killer, watchdog)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as ex:
        list(ex.map(send, batches))
    wall = time.perf_counter() - t0
    stop.set()
    if server.poll() is not None:
        print(f"checks failed: the server exited during the run (code {server.returncode}); {'; '.join(failures[:3])}")
        return 1
    for t in threads:
        t.join(timeout=60)
    time.sleep(2.0)  # abandoned requests' answers finish or are dropped
    fds1, rss1 = len(os.listdir(f"/proc/{server.pid}/fd")), rss_mb(server.pid)
    procs = tree(server.pid)
    server.send_signal(signal.SIGTERM)
    code = server.wait(timeout=300)
    for _ in range(100):  # the forkserver and resource tracker exit once they see the server gone
        left = [pid for pid in procs if Path(f"/proc/{pid}").exists() and pid != server.pid]
        if not left:
            break
        time.sleep(0.1)
    dirs_left = [p.name for p in server_tmp.iterdir()]

    missing = [i for i in range(len(plan)) if i not in rows]
    duplicated = [i for i, r in rows.items() if len(r) > 1]
    killed, wrong = compare_rows(rows, plan, index, expected, unstable)
    chaos_codes_ok = chaos_ok(chaos)
    health_max = max(health, default=float("inf"))
    figures = {
        "answers": len(plan), "hostile": sum(c[0] != "honest" for c in plan), "answers_per_s": round(len(plan) / wall, 1),
        "p50_request_s": round(statistics.median(latencies or [0.0]), 3), "p99_request_s": round(sorted(latencies or [0.0])[int(0.99 * len(latencies))], 3),
        "missing": len(missing), "duplicated": len(duplicated), "wrong": len(wrong), "hit_by_kills": killed,
        "health_polls": len(health), "health_max_latency_s": round(health_max, 4), "health_failures": len(health_fail),
        "chaos_requests": {k: len(v) for k, v in chaos.items()}, "chaos_codes_ok": chaos_codes_ok,
        "abandoned_answers_dropped_min": min(chaos.get("abandoned") or [0]), "kills": kills,
        "exit_code": code, "processes_left": len(left), "sandbox_dirs_left": len(dirs_left),
        "server_fds": [fds0, fds1], "server_rss_mb": [round(rss0, 1), round(rss1, 1)], "unstable_in_process": unstable, "unsteady_in_process": unsteady,
        "request_failures": failures[:5],
    }
    checks = {
        "a pool worker and a sandbox server were killed": len(kills) == 2 and not any("none found" in k for k in kills),
        "every answer has a row": not missing, "no answer has two rows": not duplicated,
        "every row equals in-process scoring's": not wrong,
        "the kills hit at most the answer running in each killed process": killed <= len(kills),
        "every request of the clients got its 200": not failures,
        "health answered every poll within 1 s": health and not health_fail and health_max < 1.0,
        "every chaos request got its 4xx, every abandoned one had answers dropped": chaos_codes_ok,
        "every hostile answer scored below 0.5 in process, its steady part the same both times": not unsteady,
        "SIGTERM: exit code 0": code == 0, "no process left": not left, "no sandbox directory left": not dirs_left,
        "the server's file descriptors did not grow": fds1 <= fds0 + 2,
        f"the server's RSS grew by at most {args.rss_growth_mb:g} MB": rss1 - rss0 <= args.rss_growth_mb,
    }
    failed = [name for name, good in checks.items() if not good]
    print(f"{len(plan)} answers ({figures['hostile']} hostile) in {wall:.1f} s: {figures['answers_per_s']} answers/s, request p50 "
          f"{figures['p50_request_s']} s, p99 {figures['p99_request_s']} s; {args.clients} clients, {args.workers} workers, load average {os.getloadavg()[0]:.2f}")
    print(f"rows: {len(missing)} missing, {len(duplicated)} duplicated, {len(wrong)} different from in-process, {killed} hit by the kills ({'; '.join(kills)})")
    print(f"health: {len(health)} polls, slowest {health_max:.3f} s, {len(health_fail)} failed; chaos: {figures['chaos_requests']}, codes as expected: {chaos_codes_ok}")
    print(f"after SIGTERM: exit {code}, {len(left)} processes left, {len(dirs_left)} sandbox directories left; server fds {fds0} -> {fds1}, RSS {rss0:.0f} -> {rss1:.0f} MB")
    if wrong:
        print("different:", wrong[:5])
    for failure in failures[:5]:
        print("request failed:", failure)
    for pid in left:
        print(f"left: {pid} {procs[pid][:120]}")
    for name in dirs_left:
        print(f"left: {server_tmp / name}")
    print(f"checks failed: {'; '.join(failed)}" if failed else f"all {len(checks)} checks passed")
    print(json.dumps(figures))
    return 1 if failed else 0


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


if __name__ == "__main__":
    sys.exit(main())
