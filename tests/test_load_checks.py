"""The checks of tools/load_reward_server.py can fail: rows crafted as a broken server would send
them (a hostile answer scored 1.0, a hostile answer accepted as a model, an honest row changed) and
chaos results with an abandoned request that dropped nothing. The 20,000-answer run is CI's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("load_reward_server", ROOT / "tools" / "load_reward_server.py")
load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(load)

HONEST = "```lp\nMinimize\n obj: x\nSubject To\n c: x >= 2\nEnd\n```"
HOSTILE = load.HOSTILE["memory"]
PLAN = [("honest", HONEST, 2, None), ("memory", HOSTILE, 1, None)]
INDEX = {HONEST: 0, HOSTILE: 1}
EXPECTED = [  # what in-process scoring gave each answer
    {"id": 0, "reward": 1.0, "status": "optimal", "reason": "", "objective": 2.0, "solve_seconds": 0.01},
    {"id": 1, "reward": 0.0, "status": "memory", "reason": "the code used more than 512 MB", "objective": None, "solve_seconds": 0.0},
]


def row(k: int, **changes) -> dict:
    return {**EXPECTED[k], "solve_seconds": 0.5, **changes}


def test_rows_equal_to_in_process_pass():
    assert load.compare_rows({0: [row(0)], 1: [row(1)]}, PLAN, INDEX, EXPECTED, unstable=[]) == (0, [])


def test_a_hostile_answer_that_varied_in_process_is_compared_on_its_steady_part():
    killed_instead = row(1, status="killed", reason="the code was killed by signal 9")  # by timing: memory or killed
    assert load.compare_rows({1: [killed_instead]}, PLAN, INDEX, EXPECTED, unstable=["memory"]) == (0, [])
    assert load.compare_rows({1: [killed_instead]}, PLAN, INDEX, EXPECTED, unstable=[]) == (0, [(1, "memory", "killed", "memory")])


@pytest.mark.parametrize("broken", [
    {"reward": 1.0},  # a server that scores the hostile answer 1.0
    {"reward": 0.6, "status": "killed"},
    {"reward": 0.25, "status": "optimal", "objective": 0.0},  # accepted as a solved model
], ids=["reward-1", "reward-0.6", "solved"])
def test_a_server_that_rewards_a_hostile_answer_fails_the_run(broken):
    for unstable in ([], ["memory"]):  # whether or not its in-process rows varied
        killed, wrong = load.compare_rows({0: [row(0)], 1: [row(1, **broken)]}, PLAN, INDEX, EXPECTED, unstable)
        assert (killed, wrong) == (0, [(1, "memory", broken.get("status", "memory"), "memory")])


def test_an_honest_row_that_differs_fails_even_when_honest_rows_varied():
    assert load.compare_rows({0: [row(0, reward=0.75)]}, PLAN, INDEX, EXPECTED, unstable=["honest"])[1] == [(0, "honest", "optimal", "optimal")]


def test_an_answer_running_in_a_killed_worker_is_counted_not_wrong():
    died = row(0, reward=0.0, status="error", reason="the worker process died (signal 9)")
    assert load.compare_rows({0: [died]}, PLAN, INDEX, EXPECTED, unstable=[]) == (1, [])


def test_steady_part_is_what_a_hostile_answer_keeps():
    assert load.steady_part(row(1)) == load.steady_part(row(1, status="timeout")) == ("refused", True)
    assert load.steady_part(row(1, status="optimal")) == ("solved", True)
    assert load.steady_part(row(1, reward=0.5)) == ("refused", False)


def test_chaos_checks_fail_on_a_wrong_code_a_missing_kind_or_an_abandon_that_dropped_nothing():
    good = {"malformed": [400, 400], "oversized": [413], "wrong_token": [401], "bad_label": [422], "abandoned": [4, 3]}
    assert load.chaos_ok(good)
    assert not load.chaos_ok({**good, "abandoned": [4, 0]})  # the server kept running a gone client's answers
    assert not load.chaos_ok({**good, "wrong_token": [401, 200]})  # a wrong token was let through once
    assert not load.chaos_ok({k: v for k, v in good.items() if k != "bad_label"})
    assert not load.chaos_ok({**good, "abandoned": []})
