"""Worker processes that score answers and solve models, with a wall-clock deadline per task.

A worker that passes its deadline or dies is killed and replaced; its task comes back as a
result with status 'timelimit' or 'error' and the reason. Workers are forked from a fork server
that preloads only this package and pyscipopt, so a pool created inside a process that has torch
loaded never carries torch into its workers (and a replacement starts in milliseconds).

Code answers run in a sandbox server per solver library that each worker starts on its first
code answer importing that library (see sandbox.py): a fresh interpreter, so nothing a worker holds (references, other answers) reaches
the code. The deadline of a scoring task covers the code's deadline and that start as well.

Work goes out in chunks of up to `_CHUNK` items with one chunk queued behind the running one, and
comes back as one message per chunk; each worker reuses one SCIP instance (see solve.py). The
parent's cost is one epoll wake-up and one small pickle per chunk, not per item.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import re
import selectors
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from solver_ppo.evaluation.capture import SUPPORTED, detect_library
from solver_ppo.evaluation.config import EvaluationConfig
from solver_ppo.evaluation.model import Model, ModelReadError, read_model
from solver_ppo.evaluation.reward import Reference, ScoreResult, reference_from_solve, run_code, score_answer
from solver_ppo.evaluation.sandbox import check_level, close_all
from solver_ppo.evaluation.solve import SolveResult, solve_model


def _context():
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # Not '__main__' (the default): the caller's main module may import torch.
    ctx.set_forkserver_preload(["solver_ppo.evaluation.pool", "pyscipopt"])
    return ctx


# ----------------------------------------------------------------------------- worker side


def _run_task(kind: str, shared, item):
    if kind == "score":
        answer, reference = item
        return score_answer(answer, reference, shared, solve_reference=False)
    if kind == "stream":  # a streamed answer: its reference model (if its optimum is unknown) is solved here, once per worker
        answer, reference = item
        return score_answer(answer, reference, shared)
    if kind == "solve":
        return _solve_item(item, shared)
    if kind == "code":
        return _code_item(item, shared)
    if kind == "info":
        return {"pid": os.getpid(), "torch": "torch" in sys.modules, "lightning": "lightning" in sys.modules}
    raise ValueError(f"unknown task kind {kind!r}")


def _code_item(code: str, config: EvaluationConfig) -> SolveResult:
    """A solver-library program: the model it builds (sandboxed), solved by SCIP."""
    outcome = run_code(code, detect_library(code), config)
    if outcome.status != "captured":
        return SolveResult(outcome.status, reason=f"{outcome.library}: {outcome.reason}" if outcome.library else outcome.reason)
    return _solve_item(outcome.model_text, config.limits)


def _solve_item(item: Model | str, limits) -> SolveResult:
    if isinstance(item, str):
        if len(item) > limits.max_answer_chars:
            return SolveResult("rejected", reason=f"model text has {len(item)} characters, over the limit of {limits.max_answer_chars}")
        try:
            item = read_model(item)
        except ModelReadError as err:
            return SolveResult("error", reason=f"model not readable: {err}")
    return solve_model(item, limits)


def _worker_main(conn, progress) -> None:
    """Messages are chunks `(kind, shared, [(task_id, item), ...])`, or `(kind, [(task_id, item),
    ...])` for the same `shared` as the last (the settings are sent to a worker once per run, not
    with every streamed answer); the answer is the chunk's list of results, one message per chunk.
    Meanwhile `progress` (shared memory) says which task runs and since when, so the parent can
    enforce each task's deadline without a message per task."""
    shared = None
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            msg = None
        if msg is None:  # its sandbox servers stop with it; the files of one that was killed are removed here
            close_all()
            return
        if len(msg) == 3:
            kind, shared, chunk = msg
        else:
            kind, chunk = msg
        out = []
        for task_id, item in chunk:
            progress[_STARTED] = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every process
            progress[_TASK] = task_id  # written second: the parent never pairs a task with an older start
            try:
                out.append(_run_task(kind, shared, item))
            except Exception as err:  # a bug or bad payload must not take the worker down
                out.append(_failure(kind, item, "error", f"evaluator error: {type(err).__name__}: {err}"))
        progress[_TASK] = -1
        conn.send(out)


def _failure(kind: str, item, status: str, reason: str):
    if kind in ("score", "stream"):
        terms = {"format": 0.0, "solved": 0.0, "answer": 0.0}
        if item[1].model_text is not None:
            terms["graph"] = 0.0
        return ScoreResult(0.0, terms, status, reason=reason, expected=item[1].expected, verdict=reason)
    return SolveResult(status, reason=reason)


# ----------------------------------------------------------------------------- parent side

_CHUNK = 8  # items per message to a worker: fewer messages and wake-ups than one per item
# A worker holds at most two chunks: the one it runs and one queued behind it. The queued one must
# fit the pipe's buffer (212,992 bytes on Linux) so that sending it never blocks on a hung worker.
_QUEUED_CHUNK_BYTES = 32 * 1024
# an answer that may hold solver code (extract.py decides; this only sizes the deadline)
_IMPORTS_SOLVER = re.compile(r"^\s*(?:from|import)\s+(?:" + "|".join(SUPPORTED) + r")\b", re.M)
_SANDBOX_START_S = 15.0


def _may_hold_code(answer: str | bytes) -> bool:
    if isinstance(answer, bytes):
        answer = answer.decode("utf-8", errors="replace")
    return isinstance(answer, str) and _IMPORTS_SOLVER.search(answer) is not None  # a worker's first code answer of a library starts its sandbox server for it
_STARTED, _TASK = 0, 1  # fields of a worker's progress record (shared doubles); _TASK is -1 between chunks


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: object
    progress: object  # RawArray('d', 2): [_STARTED, _TASK], written by the worker
    chunks: deque[list[int]] = field(default_factory=deque)  # task indices sent and not yet answered, in order
    seen: float = 0.0  # when the parent last gave it work or got its results (deadline base between chunks)

    def running(self) -> tuple[int, float] | None:
        """(task index, start time) of the task it runs now, or None between chunks."""
        task, started, again = self.progress[_TASK], self.progress[_STARTED], self.progress[_TASK]
        return (int(task), started) if task == again and task >= 0 else None


class EvaluatorPool:
    """`score_many` / `solve_many` block; `submit` returns a Future so scoring overlaps GPU work."""

    def __init__(self, config: EvaluationConfig, workers: int | None = None):
        self.config = config
        n = workers if workers is not None else config.workers
        if n < 1:
            raise ValueError(f"an evaluator pool needs at least 1 worker, got {n}")
        check_level(config.sandbox)
        self._ctx = _context()
        self._workers = [self._start() for _ in range(n)]
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluator-pool")
        self._references: dict[str, tuple[Reference, str]] = {}  # model text hash -> (solved reference, reason)
        self.replaced = 0  # workers killed or found dead and replaced
        self._stream: ScoreStream | None = None

    def _start(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        progress = self._ctx.RawArray("d", [0.0, -1.0])
        process = self._ctx.Process(target=_worker_main, args=(child, progress), daemon=True, name="evaluator-worker")
        # A spawned/forkserver child re-runs the parent's main *script* (not `-m` modules) before
        # the target; that script may import torch. Start the worker behind a bare __main__.
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            process.start()
        finally:
            sys.modules["__main__"] = main
        child.close()
        return _Worker(process, parent, progress)

    def _replace(self, index: int) -> None:
        old = self._workers[index]
        if old.process.is_alive():
            old.process.kill()
        old.process.join()
        old.conn.close()
        self._workers[index] = self._start()
        self.replaced += 1

    def _run(self, kind: str, shared, items: list, progress: Callable[[int], None] | None = None, stream: ScoreStream | None = None) -> list:
        """Run items on the workers in chunks; results in item order; `progress(n)` hears of every
        n results that arrive (a chunk, or a task that failed).

        Each worker runs one chunk with at most one more queued, and answers once per chunk. The
        running task (read from the worker's progress record) gets `wall_limit_s` from its start
        (more for an answer with solver code);
        past that, or when the worker dies, the worker is killed and replaced, that task gets the
        reason, and the worker's other unanswered tasks go back to the front of the queue (the
        finished ones of its chunk are run again: their results died with the worker).

        With a `stream`, items keep arriving while it runs: each result goes to its callback as
        soon as its chunk comes back (and is then dropped here), cancelled items that no worker
        has taken are skipped, and it returns once the stream is closed and drained.
        """
        if self._executor is None:
            raise RuntimeError("the evaluator pool is closed")
        results: list = [None] * len(items)
        pending = deque(range(len(items)))
        base_wall = self.config.limits.wall_limit_s
        if kind in ("score", "stream") and self.config.feedback:  # an infeasible or unbounded answer's search comes after its solve
            base_wall += self.config.feedback_seconds
        # a code answer runs before its solve: its deadline, and the start of the worker's sandbox server
        code_wall = base_wall + self.config.code.wall_s + _SANDBOX_START_S
        def wall(item) -> float:
            return code_wall if kind == "code" or (kind in ("score", "stream") and _may_hold_code(item[0])) else base_wall

        walls = [wall(item) for item in items]
        per_worker = 2 * len(self._workers)
        told: set[int] = set()  # the workers sent `shared` in this run (a replacement has not been)
        selector = selectors.DefaultSelector()

        def watch(w: int) -> None:
            selector.register(self._workers[w].conn, selectors.EVENT_READ, w)
            selector.register(self._workers[w].process.sentinel, selectors.EVENT_READ, w)

        def replace(w: int) -> None:
            selector.unregister(self._workers[w].conn)
            selector.unregister(self._workers[w].process.sentinel)
            self._replace(w)
            told.discard(w)
            watch(w)

        def deadline(worker: _Worker) -> tuple[float, int]:
            """When to kill it, and the task to blame (the first unanswered one between chunks)."""
            running = worker.running()
            if running is not None and any(running[0] in chunk for chunk in worker.chunks):
                return running[1] + walls[running[0]], running[0]
            return worker.seen + walls[worker.chunks[0][0]], worker.chunks[0][0]

        def deliver(task: int, result) -> None:
            if stream is None:
                results[task] = result
            else:  # the stream's callback owns it now; nothing of a served item stays here
                items[task] = None
                stream.deliver(task, result)

        def fail(w: int, task: int, status: str, reason: str) -> None:
            worker = self._workers[w]
            deliver(task, _failure(kind, items[task], status, reason))
            if progress is not None:
                progress(1)
            pending.extendleft(reversed([t for chunk in worker.chunks for t in chunk if t != task]))
            worker.chunks.clear()
            replace(w)

        for w in range(len(self._workers)):
            watch(w)
        if stream is not None:
            selector.register(stream.wakeup, selectors.EVENT_READ, -1)
        try:
            while True:
                if stream is not None:
                    for item in stream.take():
                        items.append(item)
                        walls.append(wall(item))
                        results.append(None)
                        pending.append(len(items) - 1)
                for w in range(len(self._workers)):
                    while pending and len(self._workers[w].chunks) < 2:
                        worker = self._workers[w]
                        # streamed answers go one per message, so a worker holds at most two and the rest
                        # stay here, where a disconnected client's answers can still be dropped
                        size = 1 if stream is not None else min(_CHUNK, max(1, len(pending) // per_worker))
                        chunk = [pending.popleft() for _ in range(min(size, len(pending)))]
                        if stream is not None:  # a disconnected client's answers: dropped before any worker runs them
                            chunk = [t for t in chunk if not stream.dropped(t)]
                            if not chunk:
                                continue
                        data, sent = self._pack(kind, shared, w not in told, items, chunk, results)
                        for t in set(chunk) - set(sent):  # those that do not pickle have their results
                            deliver(t, results[t])
                        if progress is not None and len(sent) < len(chunk):
                            progress(len(chunk) - len(sent))
                        chunk = sent
                        if data is None:
                            continue
                        if worker.chunks and len(data) > _QUEUED_CHUNK_BYTES:  # too big to queue: wait until idle
                            pending.extendleft(reversed(chunk))
                            break
                        try:
                            worker.conn.send_bytes(data)
                        except OSError:  # died: replace it now if idle, else its sentinel reports it
                            pending.extendleft(reversed(chunk))
                            if worker.chunks:
                                break
                            replace(w)
                            continue
                        told.add(w)
                        if not worker.chunks:
                            worker.seen = time.monotonic()
                        worker.chunks.append(chunk)
                busy = [w for w in range(len(self._workers)) if self._workers[w].chunks]
                if not busy and (stream is None or (stream.closed and not pending and not stream.waiting())):
                    return results
                first_deadline = min((deadline(self._workers[w])[0] for w in busy), default=None)
                events = selector.select(None if first_deadline is None else max(0.0, first_deadline - time.monotonic()))
                events = [(key, mask) for key, mask in events if key.data >= 0]
                readable = {key.data for key, _ in events if key.fileobj is self._workers[key.data].conn}
                exited = {key.data for key, _ in events} - readable
                for w in busy:
                    worker = self._workers[w]
                    if w in readable:  # one chunk's results per wake-up; the selector reports any more at once
                        try:
                            out = worker.conn.recv()
                        except (EOFError, OSError):
                            exited.add(w)
                        else:
                            for t, result in zip(worker.chunks.popleft(), out):
                                deliver(t, result)
                            worker.seen = time.monotonic()
                            if progress is not None:
                                progress(len(out))
                            continue
                    when, task = deadline(worker)
                    if w in exited:
                        worker.process.join(timeout=1.0)
                        code = worker.process.exitcode
                        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                        fail(w, task, "error", f"worker process died mid-task ({how}); replaced")
                    elif time.monotonic() >= when:
                        fail(w, task, "timelimit", f"worker killed after the wall limit of {walls[task]:g} s; replaced")
        finally:
            selector.close()

    @staticmethod
    def _pack(kind: str, shared, with_shared: bool, items: list, chunk: list[int], results: list) -> tuple[bytes | None, list[int]]:
        """The pickled message for a chunk (`shared` left out unless `with_shared`: the worker keeps
        the last it got); items that do not pickle get an error result instead."""
        head = (kind, shared) if with_shared else (kind,)
        try:
            return pickle.dumps((*head, [(t, items[t]) for t in chunk]), pickle.HIGHEST_PROTOCOL), chunk
        except Exception:
            good = []
            for t in chunk:
                try:
                    pickle.dumps(items[t])
                    good.append(t)
                except Exception as err:
                    results[t] = _failure(kind, items[t], "error", f"cannot send the task to a worker: {err}")
            if not good:
                return None, good
            return pickle.dumps((*head, [(t, items[t]) for t in good]), pickle.HIGHEST_PROTOCOL), good

    def _score_batch(self, items: list[tuple[str, Reference]], progress: Callable[[int], None] | None = None) -> list[ScoreResult]:
        # Reference models without a known optimum: solved once per text hash, on the workers, and cached.
        keys = [ref.key if ref.value is None and not ref.infeasible else None for _, ref in items]
        todo = {key: ref for key, (_, ref) in zip(keys, items) if key is not None and key not in self._references}
        if todo:
            solved = self._run("solve", self.config.limits, [ref.model_text for ref in todo.values()])
            for (key, ref), result in zip(todo.items(), solved):
                self._references[key] = (reference_from_solve(ref, result), result.reason)
        tasks = [(answer, ref if key is None else self._references[key][0]) for key, (answer, ref) in zip(keys, items)]
        return self._run("score", self.config, tasks, progress)

    def submit(self, items: list[tuple[str, Reference]], progress: Callable[[int], None] | None = None) -> Future:
        """Score in the background; `.result()` gives list[ScoreResult] in order. `progress(n)` is
        called (from the pool's thread) as every n answers are scored, e.g. a progress bar's update."""
        self._check_free()
        return self._executor.submit(self._score_batch, list(items), progress)

    def score_many(self, items: list[tuple[str, Reference]], progress: Callable[[int], None] | None = None) -> list[ScoreResult]:
        return self.submit(items, progress).result()

    def solve_many(self, models_or_texts: list[Model | str]) -> list[SolveResult]:
        limits = self.config.limits
        self._check_free()
        return self._executor.submit(self._run, "solve", limits, list(models_or_texts)).result()

    def solve_code_many(self, codes: list[str]) -> list[SolveResult]:
        """Solver-library programs (Python source): each one's captured model solved by SCIP."""
        self._check_free()
        return self._executor.submit(self._run, "code", self.config, list(codes)).result()

    def stream(self) -> ScoreStream:
        """Score answers as they arrive (the reward server, the engine adapters): `put` each with a
        callback. The pool is the stream's until the stream is closed, which lets the answers
        already put finish first. Its loop runs on a daemon thread, so a process that never
        closes it still exits (an executor thread would be joined before atexit handlers run)."""
        self._check_free()
        stream = self._stream = ScoreStream()
        stream.done = Future()
        threading.Thread(target=self._serve, args=(stream,), name="evaluator-stream", daemon=True).start()
        return stream

    def _serve(self, stream: ScoreStream) -> None:
        try:
            self._run("stream", self.config, [], stream=stream)
        except BaseException as err:
            stream.fail_all(f"evaluator error: {type(err).__name__}: {err}")
            stream.done.set_exception(err)
        else:
            stream.done.set_result(None)

    def _check_free(self) -> None:
        if self._executor is None:
            raise RuntimeError("the evaluator pool is closed")
        if self._stream is not None and not self._stream.done.done():
            raise RuntimeError("the evaluator pool serves a stream: score through it, or close it first")

    def worker_info(self) -> list[dict]:
        """pid of each worker and whether torch / lightning are loaded in it (they must not be)."""
        self._check_free()
        return self._executor.submit(self._info).result()

    def _info(self) -> list[dict]:
        out = []
        for w in range(len(self._workers)):
            # one task per worker, sent directly, so each worker answers for itself
            self._workers[w].conn.send(("info", None, [(0, None)]))
            out.extend(self._workers[w].conn.recv())
        return out

    def close(self) -> None:
        if self._executor is None:
            return
        if self._stream is not None:  # its answers already put finish first
            self._stream.close()
            self._stream.done.exception()
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


class ScoreStream:
    """Answers fed to a running pool one request at a time, each result handed to its callback as
    soon as its worker answers, so a slow answer holds up no other beyond its own deadline.
    `put`, `drop` and `close` are thread-safe; callbacks run on the pool's thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._new: list[tuple[str, Reference]] = []
        self._callbacks: dict[int, Callable[[ScoreResult], None]] = {}
        self._next = 0
        self._poked = False  # a wake-up is in the pipe that the pool has not taken yet
        self.closed = False
        self.done: Future | None = None  # the pool's serving task: finished once closed and drained
        self.wakeup, self._wake = os.pipe()  # the pool's selector watches `wakeup`
        os.set_blocking(self.wakeup, False)
        os.set_blocking(self._wake, False)

    def put(self, answer: str, reference: Reference, callback: Callable[[ScoreResult], None]) -> int:
        """Queue one answer; returns its ticket (for `drop`)."""
        with self._lock:
            if self.closed:
                raise RuntimeError("the score stream is closed")
            ticket = self._next
            self._next += 1
            self._new.append((answer, reference))
            self._callbacks[ticket] = callback
            poke, self._poked = not self._poked, True
        if poke:  # one wake-up serves every answer put before the pool takes them
            self._poke()
        return ticket

    def drop(self, ticket: int) -> None:
        """Forget an answer nobody waits for: skipped unless a worker already runs it."""
        with self._lock:
            self._callbacks.pop(ticket, None)

    def close(self) -> None:
        with self._lock:
            self.closed = True
        self._poke()

    def _poke(self) -> None:
        try:
            os.write(self._wake, b"x")
        except BlockingIOError:  # the pipe is full: the pool has wake-ups waiting already
            pass

    # pool side -----------------------------------------------------------------------------

    def take(self) -> list[tuple[str, Reference]]:
        """New answers, in ticket order (a ticket is the answer's index in the pool's run)."""
        try:
            while os.read(self.wakeup, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            new, self._new = self._new, []
            self._poked = False
        return new

    def waiting(self) -> bool:
        with self._lock:
            return bool(self._new)

    def dropped(self, ticket: int) -> bool:
        with self._lock:
            return ticket not in self._callbacks

    def deliver(self, ticket: int, result: ScoreResult) -> None:
        with self._lock:
            callback = self._callbacks.pop(ticket, None)
        if callback is not None:
            callback(result)

    def fail_all(self, reason: str) -> None:
        """The pool's loop stopped: every waiting answer gets an error result, none hangs."""
        with self._lock:
            callbacks, self._callbacks = self._callbacks, {}
            self.closed = True
        for callback in callbacks.values():
            callback(ScoreResult(0.0, {"format": 0.0, "solved": 0.0, "answer": 0.0}, "error", reason=reason))
