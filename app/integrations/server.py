"""`solver-ppo serve-reward`: the evaluation system over HTTP (aiohttp).

    POST /get_reward   OpenRLHF's remote reward: {"query": [...], "prompts": [...], "labels": [...]}
                       -> {"rewards": [...], "scores": [...], "extra_logs": {...}}
    POST /score        {"items": [{"id": ..., "answer": TEXT, "label": ANSWER_OR_JSON,
                       "reference_model": LP}]} -> {"rows": [the rows `score` writes]}
                       (evaluation.labels=votes: {"id", "answer", "group"}, the rows of one prompt
                       share `group` and vote its label; rows as `score --labels votes` writes)

With evaluation.labels=votes /get_reward groups a request's queries by their prompt (equal prompt
strings are one prompt's samples); the answers of one prompt vote its label (app/evaluation/votes.py).
    GET  /health       {"status": "ok", ...}, never behind the scoring
    GET  /metrics      Prometheus text: answers, requests by status code, latency, queue

Every answer of every request goes to one evaluator pool as it arrives (EvaluatorPool.stream), so
an answer waits only for a free worker, never for another request's slow answer. A request whose
client disconnects drops its answers that no worker has started. SIGTERM/SIGINT stop accepting,
let the requests in flight finish for --drain-s, cut those still waiting, then stop the pool.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import os
import time
from collections import Counter
from pathlib import Path

from aiohttp import web

from solver_ppo.errors import UserError
from solver_ppo.evaluation.cli_score import result_row
from solver_ppo.evaluation.config import EvaluationConfig
from solver_ppo.evaluation.reward import Reference, ScoreResult
from solver_ppo.evaluation.votes import label_groups
from solver_ppo.integrations.openrlhf import response_of, rewards_payload
from solver_ppo.integrations import scorer
from solver_ppo.integrations.scorer import load_evaluation_config, reference_from_label

TOKEN_ENV = "SOLVER_PPO_REWARD_TOKEN"


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class RewardService:
    """The pool's stream plus the request limits and counters behind the HTTP routes."""

    def __init__(self, config: EvaluationConfig, max_items: int, max_answer_chars: int, max_queued: int):
        self.config = config
        self.max_items = max_items
        self.max_answer_chars = max_answer_chars
        self.max_queued = max_queued
        scorer.configure(config)
        self.stream = scorer.stream()
        self.queued = 0  # answers put and not yet answered (or dropped)
        self.answers = Counter()  # statuses of answers scored
        self.responses = Counter()  # HTTP status codes
        self.dropped = 0  # answers of disconnected clients
        self.latency_sum = 0.0
        self.latency_count = 0
        self.started = time.monotonic()
        self.in_flight: set[asyncio.Task] = set()  # requests waiting for their answers (cut past --drain-s at shutdown)

    async def score(self, answers: list[str], references: list[Reference]) -> list[ScoreResult]:
        """Results in order; cancelling the caller (a disconnect) drops what no worker has taken."""
        if self.queued + len(answers) > self.max_queued:
            raise RequestError(503, f"server busy: {self.queued} answers queued, {len(answers)} more would pass the limit of {self.max_queued}; retry later")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in answers]
        tickets = []

        def callback(future):
            return lambda result: loop.call_soon_threadsafe(_resolve, future, result)

        self.queued += len(answers)
        task = asyncio.current_task()
        self.in_flight.add(task)
        try:
            for answer, reference, future in zip(answers, references, futures):
                tickets.append(self.stream.put(answer, reference, callback(future)))
            return list(await asyncio.gather(*futures))
        finally:
            self.in_flight.discard(task)
            for ticket, future in zip(tickets, futures):
                if future.cancelled() or not future.done():  # gather cancels its futures when the handler is cancelled
                    self.stream.drop(ticket)
                    self.dropped += 1
            self.queued -= len(answers)

    async def drain(self, seconds: float) -> None:
        """At shutdown: the requests in flight get `seconds` to finish, then they are cancelled (their
        clients get no reply, their answers that no worker has taken are dropped). aiohttp's own
        shutdown_timeout would wait twice: once for the handlers, again after cancelling only their
        request bodies."""
        if self.in_flight:
            await asyncio.wait(set(self.in_flight), timeout=seconds)
        for task in self.in_flight:
            task.cancel()

    def count(self, results: list[ScoreResult], seconds: float) -> None:
        self.answers.update(r.status for r in results)
        self.latency_sum += seconds
        self.latency_count += 1

    def close(self) -> None:
        scorer.shutdown()


def _resolve(future: asyncio.Future, result: ScoreResult) -> None:
    if not future.done():  # cancelled by a disconnect
        future.set_result(result)


def _list(body: dict, key: str, n: int | None = None) -> list:
    value = body.get(key)
    if not isinstance(value, list):
        raise RequestError(422, f"'{key}' must be a list, got {type(value).__name__}")
    if n is not None and len(value) != n:
        raise RequestError(422, f"'{key}' has {len(value)} items but 'query' has {n}; give one per query")
    return value


async def _body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except web.HTTPRequestEntityTooLarge:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(400, f"request body is not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise RequestError(422, f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _check_answers(answers: list, service: RewardService, what: str) -> None:
    if len(answers) > service.max_items:
        raise RequestError(413, f"{len(answers)} items in one request, over the limit of {service.max_items}; split the batch")
    for k, answer in enumerate(answers):
        if not isinstance(answer, str):
            raise RequestError(422, f"{what} {k} must be a string, got {type(answer).__name__}")
        if len(answer) > service.max_answer_chars:
            raise RequestError(413, f"{what} {k} has {len(answer)} characters, over the limit of {service.max_answer_chars}")


def _reference(label, reference_model, k: int) -> Reference:
    try:
        return reference_from_label(label, reference_model)
    except UserError as err:
        raise RequestError(422, f"item {k}: {err}") from None


async def get_reward(request: web.Request) -> web.Response:
    service: RewardService = request.app["service"]
    body = await _body(request)
    queries = _list(body, "query")
    _check_answers(queries, service, "query")
    prompts = _list(body, "prompts", len(queries))
    labels = _list(body, "labels", len(queries))
    answers = []
    for k, (query, prompt) in enumerate(zip(queries, prompts)):
        if not isinstance(prompt, str):
            raise RequestError(422, f"prompt {k} must be a string, got {type(prompt).__name__}")
        answers.append(response_of(query, prompt))
    if service.config.labels == "votes":
        rows = await _voted(service, answers, prompts)
    else:
        refs = [_reference(label, None, k) for k, label in enumerate(labels)]
        t0 = time.monotonic()
        results = await service.score(answers, refs)
        service.count(results, time.monotonic() - t0)
        rows = [result_row(r) for r in results]
    return web.json_response(rewards_payload(rows))


async def _voted(service: RewardService, answers: list[str], groups: list, feedback: bool = False) -> list[dict]:
    """votes: the answers scored with no reference, then rewarded against their group's label."""
    t0 = time.monotonic()
    results = await service.score(answers, [Reference() for _ in answers])
    service.count(results, time.monotonic() - t0)
    rescored, votes = label_groups(results, groups, service.config)
    return [{**result_row(r, feedback), "label": None if votes[g].label is None else votes[g].label.expected}
            for r, g in zip(rescored, groups)]


async def score(request: web.Request) -> web.Response:
    service: RewardService = request.app["service"]
    body = await _body(request)
    items = _list(body, "items")
    if len(items) > service.max_items:
        raise RequestError(413, f"{len(items)} items in one request, over the limit of {service.max_items}; split the batch")
    for k, item in enumerate(items):
        if not isinstance(item, dict) or "answer" not in item:
            raise RequestError(422, f"item {k} must be an object with 'answer' and 'label' (or 'reference_model')")
    answers = [item["answer"] for item in items]
    _check_answers(answers, service, "answer")
    if service.config.labels == "votes":
        groups = [item.get("group") for item in items]
        missing = [k for k, g in enumerate(groups) if not isinstance(g, (str, int))]
        if missing:
            raise RequestError(422, f"evaluation.labels=votes: items {missing[:5]} have no 'group' (a string or integer that "
                                    "the answers to one prompt share, so they vote its label)")
        rows = await _voted(service, answers, groups, service.config.feedback)
        return web.json_response({"rows": [{"id": item.get("id", k), **row} for k, (item, row) in enumerate(zip(items, rows))]})
    refs = [_reference(item.get("label"), item.get("reference_model"), k) for k, item in enumerate(items)]
    t0 = time.monotonic()
    results = await service.score(answers, refs)
    service.count(results, time.monotonic() - t0)
    rows = [{"id": item.get("id", k), **result_row(r, service.config.feedback)} for k, (item, r) in enumerate(zip(items, results))]
    return web.json_response({"rows": rows})


async def health(request: web.Request) -> web.Response:
    service: RewardService = request.app["service"]
    return web.json_response({"status": "ok", "queued": service.queued, "workers": service.config.workers,
                              "workers_replaced": scorer.workers_replaced(), "uptime_s": round(time.monotonic() - service.started, 3)})


async def metrics(request: web.Request) -> web.Response:
    s: RewardService = request.app["service"]
    lines = ["# TYPE solver_answers_total counter"]
    lines += [f'solver_answers_total{{status="{k}"}} {v}' for k, v in sorted(s.answers.items())]
    lines += ["# TYPE solver_http_responses_total counter"]
    lines += [f'solver_http_responses_total{{code="{k}"}} {v}' for k, v in sorted(s.responses.items())]
    lines += [
        "# TYPE solver_answers_dropped_total counter", f"solver_answers_dropped_total {s.dropped}",
        "# TYPE solver_answers_queued gauge", f"solver_answers_queued {s.queued}",
        "# TYPE solver_workers_replaced_total counter", f"solver_workers_replaced_total {scorer.workers_replaced()}",
        "# TYPE solver_request_seconds summary", f"solver_request_seconds_sum {s.latency_sum:.6f}", f"solver_request_seconds_count {s.latency_count}",
    ]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


def _middleware(token: str | None):
    @web.middleware
    async def guard(request: web.Request, handler):
        service: RewardService = request.app["service"]
        try:
            if token is not None and request.path != "/health":
                given = request.headers.get("Authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                    raise RequestError(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)")
            response = await handler(request)
        except RequestError as err:
            response = web.json_response({"error": str(err)}, status=err.status)
        except web.HTTPException as err:  # aiohttp's own: 404, 405, 413 (body over client_max_size)
            response = web.json_response({"error": err.text or err.reason}, status=err.status)
        service.responses[response.status] += 1
        return response

    return guard


def make_app(service: RewardService, token: str | None, max_body_bytes: int) -> web.Application:
    app = web.Application(middlewares=[_middleware(token)], client_max_size=max_body_bytes)
    app["service"] = service
    app.router.add_post("/get_reward", get_reward)
    app.router.add_post("/score", score)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)

    async def stop_pool(app: web.Application) -> None:
        await asyncio.to_thread(service.close)

    app.on_cleanup.append(stop_pool)
    return app


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        path = Path(args.token_file)
        if not path.is_file():
            raise UserError(f"--token-file {path}: no such file")
        token = path.read_text().strip()
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if token and len(token) < 16:
        raise UserError(f"the bearer token has {len(token)} characters; use at least 16 (e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)")
    if not token and not _loopback(args.host):
        raise UserError(f"--host {args.host} is reachable from other machines: give a bearer token with --token-file FILE or ${TOKEN_ENV}")
    return token or None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML with the evaluation settings (a training config or its `evaluation:` section)")
    parser.add_argument("--workers", type=int, help="solver worker processes (default: the config's evaluation.workers)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs a token)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--token-file", help=f"file holding the bearer token (or set ${TOKEN_ENV}); required off loopback")
    parser.add_argument("--feedback", action="store_true", help="add the solver's feedback (and an infeasible model's infeasible subset) to every /score row, as `score --feedback`")
    parser.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body (default 16 MiB; 413 past it)")
    parser.add_argument("--max-items", type=int, default=1024, help="answers per request (default 1024; 413 past it)")
    parser.add_argument("--max-answer-chars", type=int, help="characters per answer (default evaluation.limits.max_answer_chars; 413 past it)")
    parser.add_argument("--max-queued", type=int, default=16384, help="answers waiting across all requests (default 16384; 503 past it)")
    parser.add_argument("--drain-s", type=float, default=60.0, help="on SIGTERM, how long requests in flight may take to finish (default 60 s)")


def run(args: argparse.Namespace) -> int:
    overrides = {"workers": args.workers} if args.workers is not None else {}
    if args.feedback:
        overrides["feedback"] = True
    config = load_evaluation_config(args.config, **overrides)
    token = _token(args)
    for name in ("max_body_mb", "max_items", "max_queued", "drain_s"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    max_answer = args.max_answer_chars or config.limits.max_answer_chars
    service = RewardService(config, args.max_items, max_answer, args.max_queued)
    app = make_app(service, token, int(args.max_body_mb * 1024 * 1024))

    async def drain(app: web.Application) -> None:  # runs once the server stops accepting, before aiohttp's own wait
        await service.drain(args.drain_s)

    app.on_shutdown.append(drain)

    def ready(message: str) -> None:  # aiohttp prints where it listens once the socket is bound
        print(message.replace("(Press CTRL+C to quit)", "").strip(), flush=True)

    web.run_app(app, host=args.host, port=args.port, shutdown_timeout=args.drain_s, handler_cancellation=True,
                access_log=None, print=ready)
    return 0
