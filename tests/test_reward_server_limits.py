"""`serve-reward`'s refusals and limits, each by a test: which hosts need a token (`::`, a LAN
address, a host name), tokens from $SOLVER_PPO_REWARD_TOKEN and --token-file (a short one refused),
a server started off loopback with each, /metrics behind the token (/health not: it says nothing
about the traffic), 503 past --max-queued, 413 on /get_reward for too many and too long queries,
--feedback rows, and --drain-s cutting a request that outlives it at shutdown."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from solver_ppo.errors import UserError
from solver_ppo.integrations.server import TOKEN_ENV, _token, add_arguments

from tests.builders import free_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "k" * 20
LOOP = "```python\nimport pyscipopt\nwhile True:\n    pass\n```"  # runs until the sandbox's deadline
INFEASIBLE = "```lp\nMinimize\n obj: x\nSubject To\n low: x >= 5\n high: x <= 2\nEnd\n```"
LP = "```lp\nMaximize\n obj: x\nSubject To\n c: x <= 3\nEnd\n```"


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("host", ["::", "0.0.0.0", "192.168.1.20", "10.0.0.7", "fe80::1", "reward-box", "reward.example.org"])
def test_hosts_off_loopback_are_refused_without_a_token(host, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(UserError, match=f"--host {host} is reachable from other machines: give a bearer token with --token-file FILE or \\${TOKEN_ENV}"):
        _token(parsed("--host", host))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_need_no_token(host, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert _token(parsed("--host", host)) is None


def test_tokens_from_the_environment_and_a_file_and_their_minimum_length(tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, f"  {TOKEN}\n")
    assert _token(parsed("--host", "::")) == TOKEN
    file = tmp_path / "token"
    file.write_text("f" * 16 + "\n")
    assert _token(parsed("--host", "192.168.1.20", "--token-file", str(file))) == "f" * 16  # the file wins over the environment
    file.write_text("f" * 15)
    with pytest.raises(UserError, match="the bearer token has 15 characters; use at least 16"):
        _token(parsed("--host", "127.0.0.1", "--token-file", str(file)))  # refused on loopback too
    monkeypatch.setenv(TOKEN_ENV, "short")
    with pytest.raises(UserError, match="the bearer token has 5 characters; use at least 16"):
        _token(parsed())
    with pytest.raises(UserError, match=f"--token-file {tmp_path / 'missing'}: no such file"):
        _token(parsed("--token-file", str(tmp_path / "missing")))
    file.write_text("\n")  # an empty file is no token: off loopback that is refused
    with pytest.raises(UserError, match="is reachable from other machines"):
        _token(parsed("--host", "0.0.0.0", "--token-file", str(file)))


def start(tmp_path: Path, *args: str, token_env: str | None = None, wall_s: float = 2.0):
    config = tmp_path / "eval.yaml"
    config.write_text(f"evaluation:\n  workers: 1\n  code: {{wall_s: {wall_s}}}\n")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(TOKEN_ENV, None)
    if token_env:
        env[TOKEN_ENV] = token_env
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve-reward", "--port", str(port), "--config", str(config), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if call(port, "GET", "/health", token=None)[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"server did not start: {proc.communicate()[0]}")


def call(port: int, method: str, path: str, body=None, token: str | None = TOKEN, timeout: float = 60.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, (json.loads(data) if response.getheader("Content-Type", "").startswith("application/json") else data.decode())


@pytest.mark.slow
def test_a_server_off_loopback_with_a_token_file(tmp_path):
    """Bound to every interface with --token-file and --feedback: the token guards /score,
    /get_reward and /metrics; the limits answer 413 and 503 with their numbers."""
    file = tmp_path / "token"
    file.write_text(TOKEN + "\n")
    proc, port = start(tmp_path, "--host", "0.0.0.0", "--token-file", str(file), "--feedback", "--max-items", "3",
                       "--max-answer-chars", "400", "--max-queued", "2")
    try:
        assert call(port, "POST", "/score", {"items": [{"answer": LP, "label": 3}]}, token=None)[0] == 401
        assert call(port, "GET", "/metrics", token=None)[0] == 401
        assert call(port, "GET", "/metrics", token="w" * 20)[0] == 401
        status, text = call(port, "GET", "/metrics")
        assert status == 200 and 'solver_http_responses_total{code="401"} 3' in text

        status, body = call(port, "POST", "/score", {"items": [{"id": "inf", "answer": INFEASIBLE, "label": "infeasible"},
                                                                {"id": "ok", "answer": LP, "label": 3}]})
        assert status == 200
        inf, ok = body["rows"]
        assert (inf["reward"], inf["infeasible_subset"]) == (1.0, ["low", "high"])
        assert "cannot all hold" in inf["feedback"] and "Solver status: optimal" in ok["feedback"] and ok["reward"] == 1.0

        queries = {"query": ["Q:" + LP] * 4, "prompts": ["Q:"] * 4, "labels": [3] * 4}
        assert call(port, "POST", "/get_reward", queries) == (413, {"error": "4 items in one request, over the limit of 3; split the batch"})
        long_query = {"query": ["Q:" + "x" * 399], "prompts": ["Q:"], "labels": [3]}
        assert call(port, "POST", "/get_reward", long_query) == (413, {"error": "query 0 has 401 characters, over the limit of 400"})
        status, body = call(port, "POST", "/get_reward", {"query": ["Q:" + LP], "prompts": ["Q:"], "labels": [3]})
        assert status == 200 and body["rewards"] == [1.0]

        # 503 past --max-queued: two answers that hold the only worker fill the queue
        held = {}
        holder = threading.Thread(target=lambda: held.setdefault("r", call(port, "POST", "/score", {"items": [{"answer": LOOP, "label": 1}] * 2})))
        holder.start()
        deadline = time.monotonic() + 10
        while call(port, "GET", "/health", token=None)[1]["queued"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        status, body = call(port, "POST", "/score", {"items": [{"answer": LP, "label": 3}]})
        assert (status, body) == (503, {"error": "server busy: 2 answers queued, 1 more would pass the limit of 2; retry later"})
        holder.join(timeout=60)
        assert held["r"][0] == 200 and [r["status"] for r in held["r"][1]["rows"]] == ["timeout", "timeout"]
        assert call(port, "POST", "/score", {"items": [{"answer": LP, "label": 3}]})[0] == 200  # the queue drained
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


@pytest.mark.slow
def test_drain_s_cuts_a_request_that_outlives_it(tmp_path):
    """Started off loopback with $SOLVER_PPO_REWARD_TOKEN; SIGTERM while an answer runs for 4 s
    with --drain-s 2: the request is cut (no reply) 2 s after the signal, not 4 s (aiohttp's
    shutdown_timeout alone waits twice), and the process exits 0 once the running answer is
    stopped at its deadline."""
    proc, port = start(tmp_path, "--host", "0.0.0.0", "--drain-s", "2", token_env=TOKEN, wall_s=4.0)
    outcome = {}

    def request():
        try:
            outcome["reply"] = call(port, "POST", "/score", {"items": [{"answer": LOOP, "label": 1}, {"answer": LP, "label": 3}]})
        except (OSError, http.client.HTTPException) as err:
            outcome["error"] = type(err).__name__
        outcome["ended"] = time.monotonic()

    client = threading.Thread(target=request)
    client.start()
    time.sleep(0.8)  # the loop runs in the only worker, the LP waits behind it
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    client.join(timeout=60)
    code = proc.wait(timeout=60)
    exited_after = time.monotonic() - signalled
    cut_after = outcome["ended"] - signalled
    assert "reply" not in outcome, outcome
    assert 1.9 <= cut_after < 3.5, outcome
    assert code == 0 and exited_after < 2 + 4 + 5, exited_after
