"""`solver-ppo serve-reward` as a real process on localhost: rows equal `score`'s, the token,
the limits, malformed requests, a client that disconnects, health while hostile answers run, and
SIGTERM draining the requests in flight."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.builders import free_port

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "app" / "evaluation" / "samples"
TOKEN = "t" * 24
LOOP = "```python\nimport pyscipopt\nwhile True:\n    pass\n```"  # hostile: runs until the sandbox's deadline
LP = "```lp\nMaximize\n obj: 3 x + 2 y\nSubject To\n c1: x + y <= 4\n c2: x + 3 y <= 6\nBounds\n x <= 3\nEnd\n```"  # optimum 11


def _start(tmp_path, *args, token: str | None = TOKEN, labels: str = "reference"):
    config = tmp_path / "eval.yaml"
    config.write_text(f"evaluation:\n  workers: 2\n  code: {{wall_s: 2.0}}\n  labels: {labels}\n")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SOLVER_PPO_REWARD_TOKEN", None)
    if token:
        env["SOLVER_PPO_REWARD_TOKEN"] = token
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve-reward", "--port", str(port), "--config", str(config), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if _call(port, "GET", "/health")[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"server did not start: {proc.communicate()[0]}")


def _call(port: int, method: str, path: str, body=None, token: str | None = TOKEN, timeout: float = 60.0, raw: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=raw if raw is not None else (None if body is None else json.dumps(body)), headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, (json.loads(data) if response.getheader("Content-Type", "").startswith("application/json") else data.decode())


def _metric(port: int, name: str) -> float:
    text = _call(port, "GET", "/metrics")[1]
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, port = _start(tmp_path_factory.mktemp("server"), "--max-items", "16", "--max-answer-chars", "2000", "--max-body-mb", "0.05")
    yield port
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_rows_equal_score(server):
    problems = [json.loads(line) for line in (SAMPLES / "problems.jsonl").read_text().splitlines()]
    answers = [json.loads(line)["answer"] for line in (SAMPLES / "answers.jsonl").read_text().splitlines()]
    out = subprocess.run([sys.executable, "-m", "app", "score", "--data", str(SAMPLES / "problems.jsonl"), "--answers", str(SAMPLES / "answers.jsonl")],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    want = [json.loads(line) for line in out.splitlines()]
    items = [{"id": p["id"], "answer": a, "label": p.get("answer"), "reference_model": p.get("reference_model")} for p, a in zip(problems, answers)]
    status, body = _call(server, "POST", "/score", {"items": items})
    assert status == 200
    drop = lambda row: {k: v for k, v in row.items() if k != "solve_seconds"}  # noqa: E731  (timing differs run to run)
    assert [drop(r) for r in body["rows"]] == [drop(r) for r in want]
    labels = [json.dumps({"answer": p.get("answer"), "reference_model": p.get("reference_model")}) for p in problems]
    status, body = _call(server, "POST", "/get_reward", {"query": ["Q:" + a for a in answers], "prompts": ["Q:"] * 12, "labels": labels})
    assert status == 200 and body["rewards"] == body["scores"] == [r["reward"] for r in want]
    assert len(body["extra_logs"]["solver_accuracy"]) == 12


def test_token_limits_and_malformed(server):
    ok = {"items": [{"answer": LP, "label": 11}]}
    assert _call(server, "POST", "/score", ok, token=None)[0] == 401
    assert _call(server, "POST", "/score", ok, token="w" * 24) == (401, {"error": "missing or wrong bearer token (Authorization: Bearer TOKEN)"})
    assert _call(server, "GET", "/health", token=None)[0] == 200  # health needs no token
    status, body = _call(server, "POST", "/score", ok)
    assert status == 200 and body["rows"][0]["reward"] == 1.0
    assert _call(server, "POST", "/score", raw=b"{not json")[0] == 400
    assert _call(server, "POST", "/score", {"items": "x"}) == (422, {"error": "'items' must be a list, got str"})
    assert _call(server, "POST", "/score", {"items": [{"answer": LP, "label": "twelve"}]})[0] == 422
    assert _call(server, "POST", "/get_reward", {"query": ["a"], "prompts": [], "labels": [1]})[0] == 422
    assert _call(server, "POST", "/score", {"items": [{"answer": LP, "label": 11}] * 17}) == (413, {"error": "17 items in one request, over the limit of 16; split the batch"})
    assert _call(server, "POST", "/score", {"items": [{"answer": "x" * 2001, "label": 1}]})[0] == 413
    assert _call(server, "POST", "/score", raw=json.dumps({"items": [{"answer": "x" * 1999, "label": 1}] * 30}).encode())[0] == 413  # body over 50 KiB
    assert _call(server, "GET", "/nowhere")[0] == 404


def test_health_while_hostile_answers_run(server):
    """Both workers run answers that loop until their deadline; health and an honest answer do not wait for them."""
    done = {}
    hostile = threading.Thread(target=lambda: done.setdefault("r", _call(server, "POST", "/score", {"items": [{"answer": LOOP, "label": 1}] * 2})))
    hostile.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    for _ in range(5):
        assert _call(server, "GET", "/health")[0] == 200
    assert time.monotonic() - t0 < 1.0
    hostile.join(timeout=60)
    status, body = done["r"]
    assert status == 200 and [r["reward"] for r in body["rows"]] == [0.0, 0.0]
    assert [r["status"] for r in body["rows"]] == ["timeout", "timeout"]


def test_disconnect_drops_queued_answers(server):
    before = _metric(server, "solver_answers_dropped_total")
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=60)
    conn.request("POST", "/score", body=json.dumps({"items": [{"answer": LOOP, "label": 1}] * 10}),
                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    time.sleep(1.0)
    conn.sock.shutdown(socket.SHUT_RDWR)  # the client goes away mid-request
    conn.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _metric(server, "solver_answers_queued") > 0:
        time.sleep(0.2)
    assert _metric(server, "solver_answers_queued") == 0
    # the two workers held at most two answers each; the others were dropped unrun
    assert _metric(server, "solver_answers_dropped_total") - before >= 6
    t0 = time.monotonic()
    status, body = _call(server, "POST", "/score", {"items": [{"answer": LP, "label": 11}]})
    assert status == 200 and body["rows"][0]["reward"] == 1.0
    assert time.monotonic() - t0 < 8.0  # behind at most the four started hostile answers (2 s each, 2 workers)


def test_sigterm_drains_requests_in_flight(tmp_path):
    proc, port = _start(tmp_path, token=None)
    done = {}
    request = threading.Thread(target=lambda: done.setdefault("r", _call(port, "POST", "/score", {"items": [{"answer": LOOP, "label": 1}, {"answer": LP, "label": 11}]}, token=None)))
    request.start()
    time.sleep(0.8)
    proc.send_signal(signal.SIGTERM)
    request.join(timeout=60)
    status, body = done["r"]
    assert status == 200 and [r["reward"] for r in body["rows"]] == [0.0, 1.0]
    assert proc.wait(timeout=30) == 0
    with pytest.raises(OSError):
        _call(port, "GET", "/health", token=None, timeout=2)


def test_binding_off_loopback_needs_a_token():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SOLVER_PPO_REWARD_TOKEN", None)
    out = subprocess.run([sys.executable, "-m", "app", "serve-reward", "--host", "0.0.0.0"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "--host 0.0.0.0 is reachable from other machines: give a bearer token" in out.stderr


def test_votes_mode_labels_each_group_of_a_batch(tmp_path):
    """evaluation.labels=votes: /score groups its items by `group`, /get_reward its queries by prompt."""
    proc, port = _start(tmp_path, labels="votes")
    ten = LP.replace("3 x + 2 y", "2 x + 4 y")  # optimum 10
    items = [{"id": k, "answer": a, "group": g} for k, (a, g) in enumerate([(LP, "a"), (LP, "a"), (ten, "a"), (ten, "b")])]
    status, body = _call(port, "POST", "/score", {"items": items})
    assert status == 200
    assert [(r["id"], r["label"], r["reward"]) for r in body["rows"]] == [(0, 11.0, 1.0), (1, 11.0, 1.0), (2, 11.0, 0.375),
                                                                          (3, None, 0.375)]  # b: one vote, under min_votes
    status, body = _call(port, "POST", "/score", {"items": [{"answer": LP, "label": 11}]})
    assert status == 422 and "items [0] have no 'group'" in body["error"]
    prompts = ["<|user|>q1<|assistant|>"] * 3
    status, body = _call(port, "POST", "/get_reward", {"query": [p + a for p, a in zip(prompts, [ten, ten, LP])],
                                                       "prompts": prompts, "labels": [None] * 3})
    assert status == 200 and body["rewards"] == [1.0, 1.0, 0.375]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
