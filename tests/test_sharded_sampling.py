"""Sampling from a policy sharded with FSDP2 over 2 CPU processes (gloo, torch.multiprocessing):
each parameter group is gathered once per call, not once per decoding step, and the tokens are
the unsharded policy's."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh

from app.models.config import LoraSettings, ModelConfig, SamplingConfig
from app.models.loading import load_model
from app.models.policy import build_policy, transformer_blocks

PROMPTS = [[[5, 6, 7, 8], [9, 4]], [[11, 12], [13, 14, 15, 16, 17]]]  # rank 0's, rank 1's
GREEDY = SamplingConfig(max_new_tokens=6, do_sample=False)


def sample_on_rank(rank: int, port: int, model_dir: str, lora: bool, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    cfg = ModelConfig(family="chatglm", path=model_dir, lora=LoraSettings(enabled=lora))
    policy = build_policy(load_model(cfg), cfg)
    want = policy.generate(PROMPTS[rank], GREEDY).sequences  # unsharded
    policy.shard(init_device_mesh("cpu", (2,)))
    gathers = []
    original = dist.all_gather_single

    def counting(*args, **kwargs):
        gathers.append(1)
        return original(*args, **kwargs)

    dist.all_gather_single = counting
    try:
        got = [policy.generate(PROMPTS[rank], GREEDY).sequences for _ in range(2)]
    finally:
        dist.all_gather_single = original
    groups = len(transformer_blocks(policy.causal_lm)) + 1
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"gathers": len(gathers), "groups": groups,
                   "same": all(torch.equal(g, want) for g in got)}, f)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_sharded_sampling_gathers_each_group_once_per_call(lora, tiny_chatglm_dir, tmp_path):
    mp.spawn(sample_on_rank, args=(free_port(), str(tiny_chatglm_dir), lora, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["same"], result
        # 2 calls x (blocks + the LM's own group), where gathering per step would be 6 steps x as many
        assert result["gathers"] == 2 * result["groups"], result
