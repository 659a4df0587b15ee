"""EvaluatorPool: order, reference caching, killed and hung workers, no leaks, no torch in workers."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from builders import market_split
from solver_ppo.evaluation import EvaluationConfig, EvaluatorPool, Reference, SolverLimits, read_model, score_answer

ROOT = Path(__file__).resolve().parents[1]
LP = "Maximize\n obj: 3 x + 2 y\nSubject To\n c1: x + y <= 4\n c2: x + 3 y <= {b}\nBounds\n x <= 3\nEnd"


def answer(b: float) -> str:
    return f"```lp\n{LP.format(b=b)}\n```"


def optimum(b: float) -> float:  # x = 3, y = min(1, (b - 3) / 3)
    return 9 + 2 * min(1.0, (b - 3) / 3)




def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def pool():
    with EvaluatorPool(EvaluationConfig(workers=2)) as p:
        yield p


def test_order_is_preserved_and_results_are_right(pool):
    bs = [4 + 0.25 * k for k in range(12)]
    items = [(answer(b), Reference(optimum(b))) for b in bs] + [("no model here", Reference(1.0))]
    results = pool.score_many(items)
    assert [r.objective for r in results[:-1]] == pytest.approx([optimum(b) for b in bs])
    assert all(r.matched and r.reward == 1.0 for r in results[:-1])
    assert (results[-1].status, results[-1].reason) == ("no_model", "no model found")


def varied_items(n: int) -> list[tuple[str, Reference]]:
    """Answers of every kind against numeric, infeasible and model references."""
    rng = random.Random(3)
    ref_model = Reference(model_text=LP.format(b=4.5))
    items = []
    for k in range(n):
        b = rng.choice([4, 4.5, 6, 7.5])
        items.append(rng.choice([
            (answer(b), Reference(optimum(b))),
            (answer(b), Reference(optimum(b) + 1)),
            (answer(b), ref_model),
            (answer(b), Reference(infeasible=True)),
            ("```lp\nmin x\nst\n c: x <= -1\nend\n```", Reference(infeasible=True)),
            ("no model in this answer", Reference(1.0)),
            ("```lp\nmax x\nst\n c: x + + <= 1\nend\n```", ref_model),
            (answer(4) + answer(6), Reference(11.0)),
        ]))
    return items


def test_pool_results_equal_serial_results(pool):
    items = varied_items(60)  # several chunks per worker, tail chunks of 1
    config = EvaluationConfig()
    serial = [score_answer(a, ref, config) for a, ref in items]
    pooled = pool.score_many(items)
    assert [r.__dict__ for r in pooled] == [r.__dict__ | {"solve_seconds": p.solve_seconds} for r, p in zip(serial, pooled)]
    assert {r.status for r in pooled} == {"optimal", "infeasible", "no_model", "parse_error", "several"}


def test_reference_model_is_solved_once_and_cached(pool):
    ref = Reference(model_text=LP.format(b=4.5).replace("c1", "cap"))
    before = len(pool._references)
    future = pool.submit([(answer(4.5), ref), (answer(6), ref), (answer(4.5), ref)])
    results = future.result()
    assert len(pool._references) == before + 1
    assert pool._references[ref.key][0].value == pytest.approx(10.0)
    assert [r.matched for r in results] == [True, False, True]
    assert results[0].graph_distance == 0.0 and results[1].graph_distance > 0.0


def test_solve_many_accepts_models_and_texts(pool):
    out = pool.solve_many([read_model(LP.format(b=6)), LP.format(b=4.5), "max x\nst\n c: x + + <= 1\nend", "min x\nst\n c: x <= -1\nend"])
    assert [r.status for r in out] == ["optimal", "optimal", "error", "infeasible"]
    assert out[1].objective == pytest.approx(10.0) and "line 3" in out[2].reason


def test_worker_killed_mid_solve_is_replaced():
    slow = EvaluationConfig(limits=SolverLimits(time_limit_s=60, wall_limit_s=120), workers=1)
    with EvaluatorPool(slow) as victim:
        [pid] = [w["pid"] for w in victim.worker_info()]
        killer = threading.Timer(1.5, os.kill, (pid, signal.SIGKILL))
        killer.start()
        t0 = time.monotonic()
        # chunks [0, 1] and [2] queued behind it: item 2 goes back to the queue unstarted
        bs = [4.5, None, 6, 5, 4.25]
        items = [(answer(b), Reference(optimum(b))) if b else (f"```lp\n{market_split()}\n```", Reference(20.0)) for b in bs]
        results = victim.score_many(items)
        killer.join()
        assert time.monotonic() - t0 < 30
        r = results[1]
        assert (r.status, r.reward) == ("error", 0.0) and "died mid-task (signal 9)" in r.reason
        assert victim.replaced == 1
        assert [r.matched for r in results] == [True, False, True, True, True]
        [ok] = victim.score_many([(answer(6), Reference(11.0))])
        assert ok.matched


def test_worker_past_its_wall_deadline_is_killed():
    hung = EvaluationConfig(limits=SolverLimits(time_limit_s=60, wall_limit_s=1.0), workers=1)
    with EvaluatorPool(hung) as p:
        [pid] = [w["pid"] for w in p.worker_info()]
        t0 = time.monotonic()
        results = p.score_many([(f"```lp\n{market_split()}\n```", Reference(20.0)), (answer(6), Reference(11.0))])
        assert time.monotonic() - t0 < 20
        assert results[0].status == "timelimit" and "wall limit of 1 s" in results[0].reason
        assert results[1].matched  # the replacement took the next task
        time.sleep(0.2)
        assert not alive(pid)


def test_hung_item_in_the_middle_of_a_chunk_is_killed_and_the_rest_re_queued():
    hung = EvaluationConfig(limits=SolverLimits(time_limit_s=60, wall_limit_s=1.0), workers=1)
    bs = [4, None, 4.5, 5, 5.5, 6, 6.5, 7]  # 1 worker: chunks [0..3] and [4, 5] queued behind it
    items = [(answer(b), Reference(optimum(b))) if b else (f"```lp\n{market_split()}\n```", Reference(20.0)) for b in bs]
    with EvaluatorPool(hung) as p:
        t0 = time.monotonic()
        results = p.score_many(items)
        assert time.monotonic() - t0 < 20
        assert p.replaced == 1
    assert results[1].status == "timelimit" and "wall limit of 1 s" in results[1].reason
    assert [r.objective for r in results[:1] + results[2:]] == pytest.approx([optimum(b) for b in bs if b])
    assert all(r.matched for r in results[:1] + results[2:])


def test_the_wall_limit_is_per_task_not_per_chunk():
    """Twelve 0.3 s solves on one worker: the first chunk (6 tasks) takes 1.8 s, over the 1.5 s
    wall limit, yet no task runs past it, so nothing is killed."""
    config = EvaluationConfig(limits=SolverLimits(time_limit_s=0.3, wall_limit_s=1.5), workers=1)
    with EvaluatorPool(config) as p:
        results = p.solve_many([market_split(seed=k) for k in range(12)])
        assert p.replaced == 0
    assert [r.status for r in results] == ["timelimit"] * 12
    assert all("SCIP hit the time limit of 0.3 s" in r.reason for r in results)


def test_a_large_chunk_is_never_queued_behind_a_hung_item():
    """A 1 MB answer does not fit the pipe's buffer: sent behind a hung item, the parent would block
    in send and never kill the hung worker. It must wait until the worker is idle (or replaced)."""
    hung = EvaluationConfig(limits=SolverLimits(time_limit_s=60, wall_limit_s=1.0, max_answer_chars=2_000_000), workers=1)
    big = [("The plan, explained at length. " * 35_000) + answer(b) for b in (5, 6)]
    items = [(f"```lp\n{market_split()}\n```", Reference(20.0)), (big[0], Reference(optimum(5))), (big[1], Reference(optimum(6)))]
    with EvaluatorPool(hung) as p:
        [pid] = [w["pid"] for w in p.worker_info()]
        future = p.submit(items)  # chunks [0] and then [1], [2], each too large to queue
        try:
            results = future.result(timeout=30)
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)  # unblock the parent's send so the pool can close
            raise
    assert results[0].status == "timelimit"
    assert [r.matched for r in results[1:]] == [True, True]


def test_hundreds_of_calls_leak_no_processes():
    seen = set()
    with EvaluatorPool(EvaluationConfig(workers=2)) as p:
        for k in range(150):
            r = p.score_many([(answer(4 + k % 5), Reference(optimum(4 + k % 5)))])
            assert r[0].matched
        seen.update(w["pid"] for w in p.worker_info())
    time.sleep(0.2)
    assert len(seen) == 2 and not any(alive(pid) for pid in seen)
    with pytest.raises(RuntimeError, match="closed"):
        p.score_many([("x", Reference(1.0))])


@pytest.mark.slow  # importing torch in the child script takes ~10 s here
def test_workers_do_not_load_torch_when_the_main_script_does(tmp_path):
    script = tmp_path / "train_like.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(ROOT)!r})
            import torch  # the caller has torch loaded; its workers must not
            from solver_ppo.evaluation import EvaluationConfig, EvaluatorPool, Reference

            if __name__ == "__main__":
                with EvaluatorPool(EvaluationConfig(workers=1)) as pool:
                    info = pool.worker_info()[0]
                    [r] = pool.score_many([("```lp\\nmax x\\nst\\n c: x <= 2\\nend\\n```", Reference(2.0))])
                print(info["torch"], info["lightning"], r.matched)
            """
        )
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "True"]
