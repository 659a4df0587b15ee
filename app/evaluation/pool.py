"""Worker processes that score answers and solve models, with a wall-clock deadline per task.

A worker that passes its deadline or dies is killed and replaced; its task comes back as a
result with status 'timelimit' or 'error' and the reason. Workers are forked from a fork server
that preloads only this package and pyscipopt, so a pool created inside a process that has torch
loaded never carries torch into its workers (and a replacement starts in milliseconds).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
import types
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import wait

from app.evaluation.config import EvaluationConfig
from app.evaluation.model import Model, ModelReadError, read_model
from app.evaluation.reward import Reference, ScoreResult, reference_from_solve, score_answer
from app.evaluation.solve import SolveResult, solve_model


def _context():
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # Not '__main__' (the default): the caller's main module may import torch.
    ctx.set_forkserver_preload(["app.evaluation.pool", "pyscipopt"])
    return ctx


# ----------------------------------------------------------------------------- worker side


def _run_task(kind: str, payload):
    if kind == "score":
        answer, reference, config = payload
        return score_answer(answer, reference, config, solve_reference=False)
    if kind == "solve":
        item, limits = payload
        return _solve_item(item, limits)
    if kind == "info":
        return {"pid": os.getpid(), "torch": "torch" in sys.modules, "lightning": "lightning" in sys.modules}
    raise ValueError(f"unknown task kind {kind!r}")


def _solve_item(item: Model | str, limits) -> SolveResult:
    if isinstance(item, str):
        if len(item) > limits.max_answer_chars:
            return SolveResult("rejected", reason=f"model text has {len(item)} characters, over the limit of {limits.max_answer_chars}")
        try:
            item = read_model(item)
        except ModelReadError as err:
            return SolveResult("error", reason=f"model not readable: {err}")
    return solve_model(item, limits)


def _worker_main(conn) -> None:
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task_id, kind, payload = msg
        try:
            result = _run_task(kind, payload)
        except Exception as err:  # a bug or bad payload must not take the worker down
            result = _failure(kind, payload, "error", f"evaluator error: {type(err).__name__}: {err}")
        conn.send((task_id, result))


def _failure(kind: str, payload, status: str, reason: str):
    if kind == "score":
        terms = {"format": 0.0, "solved": 0.0, "answer": 0.0}
        if payload[1].model_text is not None:
            terms["graph"] = 0.0
        return ScoreResult(0.0, terms, status, reason=reason)
    return SolveResult(status, reason=reason)


# ----------------------------------------------------------------------------- parent side


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: object


class EvaluatorPool:
    """`score_many` / `solve_many` block; `submit` returns a Future so scoring overlaps GPU work."""

    def __init__(self, config: EvaluationConfig, workers: int | None = None):
        self.config = config
        n = workers if workers is not None else config.workers
        if n < 1:
            raise ValueError(f"an evaluator pool needs at least 1 worker, got {n}")
        self._ctx = _context()
        self._workers = [self._start() for _ in range(n)]
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluator-pool")
        self._references: dict[str, tuple[Reference, str]] = {}  # model text hash -> (solved reference, reason)
        self.replaced = 0  # workers killed or found dead and replaced

    def _start(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main, args=(child,), daemon=True, name="evaluator-worker")
        # A spawned/forkserver child re-runs the parent's main *script* (not `-m` modules) before
        # the target; that script may import torch. Start the worker behind a bare __main__.
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            process.start()
        finally:
            sys.modules["__main__"] = main
        child.close()
        return _Worker(process, parent)

    def _replace(self, index: int) -> None:
        old = self._workers[index]
        if old.process.is_alive():
            old.process.kill()
        old.process.join()
        old.conn.close()
        self._workers[index] = self._start()
        self.replaced += 1

    def _run(self, tasks: list[tuple[str, object]]) -> list:
        """Run tasks on the workers, one at a time each; results in task order."""
        if self._executor is None:
            raise RuntimeError("the evaluator pool is closed")
        results: list = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        busy: dict[int, tuple[int, float]] = {}  # worker index -> (task index, deadline)
        wall = self.config.limits.wall_limit_s
        while pending or busy:
            for w in range(len(self._workers)):
                while w not in busy and pending:
                    t = pending.popleft()
                    try:
                        self._workers[w].conn.send((t, *tasks[t]))
                        busy[w] = (t, time.monotonic() + wall)
                    except (BrokenPipeError, OSError, EOFError):  # died while idle: replace, try again
                        pending.appendleft(t)
                        self._replace(w)
                    except Exception as err:  # the payload does not pickle
                        results[t] = _failure(*tasks[t], "error", f"cannot send the task to a worker: {err}")
            waitables = [x for w in busy for x in (self._workers[w].conn, self._workers[w].process.sentinel)]
            timeout = max(0.0, min(d for _, d in busy.values()) - time.monotonic()) if busy else 0.0
            ready = set(wait(waitables, timeout=timeout)) if waitables else set()
            for w, (t, deadline) in list(busy.items()):
                worker = self._workers[w]
                if worker.conn in ready or worker.process.sentinel in ready:
                    try:
                        if worker.conn.poll():
                            _, results[t] = worker.conn.recv()
                            del busy[w]
                            continue
                    except (EOFError, OSError):
                        pass
                    if not worker.process.is_alive() or worker.process.sentinel in ready:
                        worker.process.join(timeout=1.0)
                        code = worker.process.exitcode
                        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                        results[t] = _failure(*tasks[t], "error", f"worker process died mid-task ({how}); replaced")
                        del busy[w]
                        self._replace(w)
                elif time.monotonic() >= deadline:
                    results[t] = _failure(*tasks[t], "timelimit", f"worker killed after the wall limit of {wall:g} s; replaced")
                    del busy[w]
                    self._replace(w)
        return results

    def _score_batch(self, items: list[tuple[str, Reference]]) -> list[ScoreResult]:
        # Reference models: solved once per text hash, on the workers, and cached.
        todo = {}
        for _, ref in items:
            if ref.value is None and not ref.infeasible and ref.model_text is not None and ref.key not in self._references:
                todo[ref.key] = ref
        if todo:
            solved = self._run([("solve", (ref.model_text, self.config.limits)) for ref in todo.values()])
            for (key, ref), result in zip(todo.items(), solved):
                self._references[key] = (reference_from_solve(ref, result), result.reason)
        tasks = []
        for answer, ref in items:
            if ref.key in self._references and ref.value is None and not ref.infeasible:
                ref = self._references[ref.key][0]
            tasks.append(("score", (answer, ref, self.config)))
        return self._run(tasks)

    def submit(self, items: list[tuple[str, Reference]]) -> Future:
        """Score in the background; `.result()` gives list[ScoreResult] in order."""
        if self._executor is None:
            raise RuntimeError("the evaluator pool is closed")
        return self._executor.submit(self._score_batch, list(items))

    def score_many(self, items: list[tuple[str, Reference]]) -> list[ScoreResult]:
        return self.submit(items).result()

    def solve_many(self, models_or_texts: list[Model | str]) -> list[SolveResult]:
        limits = self.config.limits
        if self._executor is None:
            raise RuntimeError("the evaluator pool is closed")
        return self._executor.submit(self._run, [("solve", (m, limits)) for m in models_or_texts]).result()

    def worker_info(self) -> list[dict]:
        """pid of each worker and whether torch / lightning are loaded in it (they must not be)."""
        if self._executor is None:
            raise RuntimeError("the evaluator pool is closed")
        return self._executor.submit(self._info).result()

    def _info(self) -> list[dict]:
        out = []
        for w in range(len(self._workers)):
            # one task per worker, sent directly, so each worker answers for itself
            self._workers[w].conn.send((0, "info", None))
            out.append(self._workers[w].conn.recv()[1])
        return out

    def close(self) -> None:
        if self._executor is None:
            return
        self._executor.shutdown(wait=True)
        self._executor = None
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for worker in self._workers:
            worker.process.join(timeout=2.0)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()

    def __enter__(self) -> EvaluatorPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
