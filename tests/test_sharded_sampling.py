"""Sampling from a policy sharded with FSDP2 over 2 CPU processes (gloo, torch.multiprocessing):
each parameter group is gathered once per call, not once per decoding step, and the tokens are
the unsharded policy's."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh

from solver_ppo.distributed import leave_process_group
from solver_ppo.models.config import LoraSettings, ModelConfig, SamplingConfig
from solver_ppo.models.loading import load_model
from solver_ppo.models.policy import build_policy, transformer_blocks
from tests.builders import free_port

PROMPTS = [[[5, 6, 7, 8], [9, 4]], [[11, 12], [13, 14, 15, 16, 17]]]  # rank 0's, rank 1's
GREEDY = SamplingConfig(max_new_tokens=6, do_sample=False)


def sample_on_rank(rank: int, port: int, model_dir: str, lora: bool, gather: bool, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    cfg = ModelConfig(family="chatglm", path=model_dir, lora=LoraSettings(enabled=lora))
    policy = build_policy(load_model(cfg), cfg)
    # rank 0's rows stop at their first token, rank 1's never: the ranks finish at different steps
    first = policy.generate(PROMPTS[rank], GREEDY).responses[:, 0]
    policy.stop_token_ids = first.tolist() if rank == 0 else []
    want = policy.generate(PROMPTS[rank], GREEDY).sequences  # unsharded
    policy.shard(init_device_mesh("cpu", (2,)), gather_for_sampling=gather)
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
    # decoding on after this rank's rows are done (block by block) only appends padding
    same = all(torch.equal(g[:, : want.shape[1]], want) and bool((g[:, want.shape[1] :] == policy.pad_token_id).all())
               for g in got)
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"gathers": len(gathers), "blocks": len(transformer_blocks(policy.causal_lm)),
                   "steps": [g.shape[1] - len(max(PROMPTS[rank], key=len)) for g in got], "same": same}, f)
    leave_process_group()  # else the process may abort on exit, as it did in CI


@pytest.mark.slow
# Each sampling mode once, with and without LoRA between them: the adapter's wrapping and the
# gathering are independent (the LoRA layers are gathered with the blocks that hold them).
@pytest.mark.parametrize(("gather", "lora"), [(True, True), (False, False)], ids=["gather-once-lora", "block-by-block"])
def test_sharded_sampling_gathers_once_per_call_or_block_by_block(lora, gather, tiny_chatglm_dir, tmp_path):
    mp.spawn(sample_on_rank, args=(free_port(), str(tiny_chatglm_dir), lora, gather, str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for result in results:
        assert result["same"], result
    blocks = results[0]["blocks"]
    if gather:  # 2 calls x (blocks + the LM's own group); rank 0 stops after 1 step, rank 1 after 6
        assert [r["steps"] for r in results] == [[1, 1], [6, 6]], results
        assert [r["gathers"] for r in results] == [2 * (blocks + 1)] * 2, results
    else:  # every rank steps until all are done; each step gathers each block, each call the root group once
        assert [r["steps"] for r in results] == [[6, 6], [6, 6]], results
        assert [r["gathers"] for r in results] == [2 * (1 + 6 * blocks)] * 2, results
