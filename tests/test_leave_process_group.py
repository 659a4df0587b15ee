"""Launched runs. A rank that exits with collectives still running on gloo's threads aborts (SIGABRT) unless it
leaves the process group first: `distributed.leave_process_group`, which `python -m app` calls after
every command that joined one. Two real processes; without the call this child aborted in 8 of 8 runs
(torch 2.13). And a launcher that started another number of processes than the config's devices
is refused before anything loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders import free_port

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys, types
import torch
import torch.distributed as dist
from solver_ppo import cli

def run(args):  # a command that runs as one of two ranks and ends with collectives in flight
    dist.init_process_group("gloo", rank=args.rank, world_size=2)
    global group
    group = dist.group.WORLD  # held to the end, as a model wrapper holds it
    pending = [dist.all_reduce(torch.ones(100_000), async_op=True) for _ in range(30)]  # never waited for
    return 0

command = types.ModuleType("two_ranks")
command.add_arguments = lambda parser: parser.add_argument("rank", type=int)
command.run = run
sys.modules["two_ranks"] = command
cli.COMMANDS["two-ranks"] = ("two_ranks", "test command")
assert cli.main(["two-ranks", sys.argv[1]]) == 0
assert not dist.is_initialized()
print("left")
"""

def test_a_rank_with_collectives_in_flight_leaves_after_its_command_and_exits_cleanly():
    port = free_port()
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONPATH": str(ROOT)}
    ranks = [subprocess.Popen([sys.executable, "-c", CHILD, str(rank)], env=env, cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for rank in (0, 1)]
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], [err[-1500:] for _, err in outputs]
    assert [out.strip() for out, _ in outputs] == ["left", "left"]


def test_a_launchers_process_count_must_be_the_configs_devices_times_nodes(monkeypatch):
    from solver_ppo.config import TrainerSettings
    from solver_ppo.distributed import check_launcher, launcher_world_size
    from solver_ppo.errors import UserError

    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "LT_CLI_USED", "SLURM_NTASKS",
                 "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert launcher_world_size() is None
    check_launcher(TrainerSettings(devices=1))  # no launcher: nothing to compare
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_JOB_NAME", "ppo")
    assert launcher_world_size() == (8, "SLURM")
    check_launcher(TrainerSettings(devices=4, num_nodes=2))
    with pytest.raises(UserError, match=r"^SLURM started 8 processes, but trainer.devices x trainer.num_nodes = 4 x 1 = 4: "
                                        r"set trainer.devices=4 trainer.num_nodes=2"):
        check_launcher(TrainerSettings(devices=4))
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # an interactive allocation: Lightning launches itself
    assert launcher_world_size() is None
