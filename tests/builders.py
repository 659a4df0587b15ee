"""Small model and instance builders shared by several test files."""

from __future__ import annotations

import random

import torch
from transformers import LlamaConfig, LlamaForCausalLM

PAD = 0


def market_split(m: int = 4, n: int = 40, seed: int = 1) -> str:
    """A random market-split instance (LP text): tiny, and far beyond SCIP in a second."""
    rng = random.Random(seed)
    lines = ["Minimize", " obj: " + " + ".join(f"x{j}" for j in range(n)), "Subject To"]
    for i in range(m):
        a = [rng.randint(0, 99) for _ in range(n)]
        lines.append(f" s{i}: " + " + ".join(f"{c} x{j}" for j, c in enumerate(a)) + f" = {sum(a) // 2}")
    lines += ["Binaries", " " + " ".join(f"x{j}" for j in range(n)), "End"]
    return "\n".join(lines)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with 61 tokens (pad 0, bos 1, eos 2), in eval mode."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()
