"""The memory model's exact terms (app/models/memory.py) against the tensors of a real policy and cache."""

import json
import re
from pathlib import Path

import pytest
import torch

from solver_ppo.models.chatglm import CHATGLM3_6B, GLM4_9B_CHAT, KVCache
from solver_ppo.models.config import LoraSettings, ModelConfig
from solver_ppo.models.loading import load_model
from solver_ppo.config import load_config
from solver_ppo.models.memory import USABLE, ModelShape, StepSettings, estimate, fits, kv_capacity, step_settings
from solver_ppo.models.policy import build_policy

ROOT = Path(__file__).resolve().parents[1]


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors`."""
    seen = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_resident_terms_equal_the_policy_and_optimizer_tensors(tiny_chatglm_dir, dtype):
    cfg = ModelConfig(family="chatglm", path=str(tiny_chatglm_dir), dtype=dtype, gradient_checkpointing=True,
                      lora=LoraSettings(r=4, alpha=8))  # fmt: skip
    loaded = load_model(cfg)
    policy = build_policy(loaded, cfg).to(getattr(torch, dtype))  # bf16-true casts the value head too
    params = policy.policy_parameters() + policy.value_parameters()
    optimizer = torch.optim.AdamW(params)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    policy.train()
    logprobs, values, _ = policy(ids, torch.ones_like(ids), response_start=3)
    (logprobs.sum() + values.sum()).backward()
    optimizer.step()

    shape = ModelShape.from_config(json.loads((tiny_chatglm_dir / "config.json").read_text()))
    e = estimate(shape, StepSettings(rows=1, prompt_tokens=3, response_tokens=3, minibatch=1, lora_r=4, dtype=dtype))
    model_tensors = list(policy.parameters()) + list(policy.buffers())
    assert e.resident["base weights"] + e.resident["LoRA weights"] + e.resident["value head"] == pytest.approx(
        tensor_bytes(model_tensors), rel=1e-3)  # the stored inv_freq buffer is the only rounding
    assert e.resident["LoRA gradients"] + e.resident["value head gradients"] == tensor_bytes(p.grad for p in params)
    moments = [v for state in optimizer.state.values() for k, v in state.items() if k != "step"]
    assert e.resident["AdamW moments"] == tensor_bytes(moments)


def test_kv_cache_term_equals_the_cache_buffers():
    cache = KVCache(n_layers=2)
    prompt, response, rows, groups, dim = 300, 260, 3, 2, 8
    cache.append(0, torch.zeros(rows, groups, prompt, dim), torch.zeros(rows, groups, prompt, dim))
    for _ in range(response - 1):  # the last sampled token is never fed back
        cache.append(0, torch.zeros(rows, groups, 1, dim), torch.zeros(rows, groups, 1, dim))
    assert cache.keys[0].shape[2] == kv_capacity(prompt, response) == 1024  # 512 after the prompt, then doubled
    shape = ModelShape(layers=1, hidden=16, ffn=32, heads=4, kv_groups=groups, head_dim=dim, vocab=64)
    e = estimate(shape, StepSettings(rows=rows, prompt_tokens=prompt, response_tokens=response, minibatch=1,
                                     dtype="float32"))  # fmt: skip
    assert e.sampling["KV cache"] == cache.keys[0].nbytes + cache.values[0].nbytes


def test_chatglm3_6b_figures():
    shape = ModelShape.from_config(CHATGLM3_6B)
    assert shape.params() == 6_243_584_032  # the published parameter count
    e = estimate(shape, StepSettings(rows=32, prompt_tokens=1024, response_tokens=768, minibatch=4))
    assert e.resident["base weights"] == 12_487_168_064
    assert e.resident["LoRA weights"] == 28 * 16 * (4096 + 4608 + 4096 + 4096 + 4096 + 27392 + 13696 + 4096) * 2
    assert e.sampling["merged weights"] == 28 * (4096 * 4608 + 4096 * 4096 + 4096 * 27392 + 13696 * 4096) * 2
    assert e.sampling["KV cache"] == 28 * 2 * 32 * 2 * 2048 * 128 * 2  # 1,792 tokens in a 2,048-column cache
    without_merge = estimate(shape, StepSettings(rows=32, prompt_tokens=1024, response_tokens=768, minibatch=4,
                                                 merge_for_sampling=False))  # fmt: skip
    assert e.peak - without_merge.peak == e.sampling["merged weights"] and e.peak_phase == "sampling"


@pytest.mark.parametrize("path, config", [("configs/chatglm3_6b_lora.yaml", CHATGLM3_6B),
                                          ("configs/chatglm3_6b_lora_4gpu.yaml", CHATGLM3_6B),
                                          ("configs/glm4_9b_lora.yaml", GLM4_9B_CHAT)])  # fmt: skip
def test_gpu_configs_fit_the_card_they_name(path, config):
    """Each GPU config names its card in its first line ("one 40 GB GPU"); its defaults must fit it."""
    card = int(re.search(r"(\d+) GB GPU", (ROOT / path).read_text().splitlines()[0]).group(1))
    cfg = load_config(ROOT / path, ["model.path=x", "data.train=x"])
    e = estimate(ModelShape.from_config(config), step_settings(cfg))
    assert fits(e.peak, card), f"{path}: {e.peak / 1e9:.1f} GB by the memory model, more than {USABLE:.0%} of {card} GB"
