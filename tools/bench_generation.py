"""Generation speed of the native ChatGLM, and the memory cost of the LoRA reference.

    .venv/bin/python tools/bench_generation.py [--batch 8 --prompt 64 --new-tokens 256]
        [--layers 4 --hidden 256 --heads 8 --kv-heads 2 --ffn 688 --vocab 4096] [--threads 1]

CPU, random weights, greedy decoding, no stop tokens (every row generates --new-tokens):
1. native ChatGLM, our loop with its KV cache;
2. the same model and loop re-running the whole sequence each step (use_cache=False);
3. transformers' own `generate` on a LlamaForCausalLM of the same size (layers, hidden, heads,
   kv heads, vocab, ffn), the baseline.
Targets: (1) >= 5x (2) and >= 1.0x (3) in tokens/s.

Memory: bytes of the distinct parameter and buffer storages of policy + reference + value head
(LoRA, r=8, ChatGLM default targets) over the bytes of the model alone; target <= 1.15. Counted,
not sampled, so it is exact and deterministic; printed for the bench model and for the
chatglm3-6b shapes (built on the meta device, no memory used).

With CUDA: a chatglm3-6b-sized model with random bf16 weights, batch 16, 256 new tokens, cached:
tokens/s and peak GPU memory, next to transformers' generate on a Llama of the same shapes, and
the decode rate as a fraction of the memory-bandwidth bound (each step reads every weight and the
KV cache once, at the bandwidth a device-to-device copy reaches).

Prints a table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from solver_ppo.models.chatglm import CHATGLM3_6B, ChatGLMConfig, ChatGLMForCausalLM  # noqa: E402
from solver_ppo.models.config import LoraSettings, SamplingConfig  # noqa: E402
from solver_ppo.models.generation import generate, left_pad  # noqa: E402
from solver_ppo.models.policy import PolicyWithValue  # noqa: E402

PAD = 0


def models(layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int, dtype, device):
    """A native ChatGLM and a Llama with the same shapes, random weights, eval mode."""
    glm_cfg = ChatGLMConfig(
        num_layers=layers, padded_vocab_size=vocab, hidden_size=hidden, ffn_hidden_size=ffn,
        kv_channels=hidden // heads, num_attention_heads=heads, multi_query_group_num=kv_heads,
        seq_length=4096, pad_token_id=PAD, eos_token_id=2,
    )
    llama_cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        pad_token_id=PAD, eos_token_id=None, bos_token_id=None, torch_dtype=dtype,
    )
    with torch.device(device):
        glm = ChatGLMForCausalLM._from_config(glm_cfg, torch_dtype=dtype).eval()
        llama = LlamaForCausalLM._from_config(llama_cfg, torch_dtype=dtype).eval()
    llama.generation_config.eos_token_id = None  # no early stops: both generate every token
    return glm, llama


def random_prompts(batch: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=g).tolist()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours(model, prompts, new_tokens: int, use_cache: bool = True) -> float:
    gen = generate(model, prompts, pad_token_id=PAD, stop_token_ids=[],
                   sampling=SamplingConfig(max_new_tokens=new_tokens, do_sample=False), use_cache=use_cache)
    assert gen.response_lengths.min() == new_tokens
    return gen.tokens_per_second


@torch.no_grad()
def hf(model, prompts, new_tokens: int) -> float:
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, PAD, device)
    sync(device)
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, pad_token_id=PAD)
    sync(device)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + new_tokens
    return ids.shape[0] * new_tokens / elapsed


def best_interleaved(n: int, runs: dict) -> dict[str, float]:
    """Best tokens/s of n rounds, the contenders taking turns so load from others hits both alike."""
    best = dict.fromkeys(runs, 0.0)
    for _ in range(n):
        for name, run in runs.items():
            best[name] = max(best[name], run())
    return best


def distinct_bytes(module: torch.nn.Module) -> int:
    """Bytes of distinct parameter/buffer storages (a tensor shared by two roles counts once)."""
    seen = {}
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device.type == "meta":
            seen[id(t)] = t.numel() * t.element_size()
        else:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def lora_memory_ratio(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes of the model alone, bytes of policy + reference + value head with LoRA r=8)."""
    alone = distinct_bytes(model)
    policy = PolicyWithValue(model, LoraSettings(r=8, alpha=16), pad_token_id=PAD, stop_token_ids=[2])
    return alone, distinct_bytes(policy)


def row(name: str, value: str, note: str = "") -> None:
    print(f"{name:<44} {value:>14}  {note}")


def copy_bandwidth(device: torch.device, n_bytes: int = 2 << 30, repeats: int = 5) -> float:
    """Bytes/s the device moves in a copy of `n_bytes` (each byte read once and written once), best of `repeats`."""
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n_bytes / best


def decode_bytes_per_step(weights: int, rows: int, mean_keys: float, layers: int, kv_heads: int, head_dim: int,
                          itemsize: int) -> float:
    """What one decoding step must read at least: every weight once and each row's cached keys and values."""
    return weights + layers * 2 * rows * kv_heads * mean_keys * head_dim * itemsize


def gpu_run(args) -> dict:
    device = torch.device("cuda")
    shapes = dict(layers=CHATGLM3_6B["num_layers"], hidden=CHATGLM3_6B["hidden_size"],
                  heads=CHATGLM3_6B["num_attention_heads"], kv_heads=CHATGLM3_6B["multi_query_group_num"],
                  ffn=CHATGLM3_6B["ffn_hidden_size"], vocab=CHATGLM3_6B["padded_vocab_size"])
    glm, llama = models(**shapes, dtype=torch.bfloat16, device=device)
    prompts = random_prompts(16, args.prompt, shapes["vocab"])
    ours(glm, prompts, 8)  # warm-up: kernels, allocator
    hf(llama, prompts, 8)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    glm_tps = ours(glm, prompts, 256)
    peak = torch.cuda.max_memory_allocated(device)
    llama_tps = hf(llama, prompts, 256)
    weights = distinct_bytes(glm)
    bandwidth = copy_bandwidth(device)
    per_step = decode_bytes_per_step(weights, 16, args.prompt + 128, shapes["layers"], shapes["kv_heads"],
                                     shapes["hidden"] // shapes["heads"], 2)  # fmt: skip
    bound_tps = 16 * bandwidth / per_step  # tokens/s if each step only moved its bytes at copy speed
    return {
        "gpu": torch.cuda.get_device_name(device),
        "gpu_chatglm3_6b_bf16_tokens_per_s": round(glm_tps, 1),
        "gpu_hf_llama_same_shapes_tokens_per_s": round(llama_tps, 1),
        "gpu_peak_memory_gib": round(peak / 2**30, 2),
        "gpu_chatglm_weights_gib": round(weights / 2**30, 2),
        "gpu_generation_extra_gib": round((peak - base) / 2**30, 2),
        "gpu_copy_bandwidth_gb_s": round(bandwidth / 1e9, 1),
        "gpu_bandwidth_bound_tokens_per_s": round(bound_tps, 1),
        "gpu_decode_fraction_of_bandwidth_bound": round(glm_tps / bound_tps, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--ffn", type=int, default=688)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: stable timings on a shared machine; 0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N for the cached and HF runs")
    parser.add_argument("--no-gpu", action="store_true", help="skip the chatglm3-6b-sized run even with CUDA")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cpu = torch.device("cpu")
    glm, llama = models(args.layers, args.hidden, args.heads, args.kv_heads, args.ffn, args.vocab, torch.float32, cpu)
    prompts = random_prompts(args.batch, args.prompt, args.vocab)
    ours(glm, prompts, 4)  # warm-up: first calls pay one-off dispatch and allocation costs
    hf(llama, prompts, 4)

    best = best_interleaved(args.repeats, {
        "cached": lambda: ours(glm, prompts, args.new_tokens),
        "hf": lambda: hf(llama, prompts, args.new_tokens),
    })
    cached, llama_tps = best["cached"], best["hf"]
    uncached = ours(glm, prompts, args.new_tokens, False)

    alone, with_ref = lora_memory_ratio(glm)
    with torch.device("meta"):
        big = ChatGLMForCausalLM._from_config(ChatGLMConfig(**CHATGLM3_6B), torch_dtype=torch.bfloat16)
    big_alone, big_with_ref = lora_memory_ratio(big)

    size = (f"{args.layers} layers, hidden {args.hidden}, {args.heads} heads, {args.kv_heads} kv heads, "
            f"ffn {args.ffn}, vocab {args.vocab}, fp32")
    print(f"CPU ({torch.get_num_threads()} threads), {size}; batch {args.batch}, prompt {args.prompt}, "
          f"{args.new_tokens} new tokens, greedy")
    row("native ChatGLM, KV cache (ours)", f"{cached:.1f} tok/s")
    row("native ChatGLM, no cache (ours)", f"{uncached:.1f} tok/s")
    row("HF Llama generate, same shapes", f"{llama_tps:.1f} tok/s")
    row("cached / uncached", f"{cached / uncached:.2f}x", "target >= 5")
    row("cached / HF Llama", f"{cached / llama_tps:.2f}x", "target >= 1.0")
    row("policy+ref+value / model (bench model)", f"{with_ref / alone:.4f}", f"{with_ref:,} / {alone:,} bytes")
    row("policy+ref+value / model (chatglm3-6b)", f"{big_with_ref / big_alone:.4f}",
        f"{big_with_ref:,} / {big_alone:,} bytes, bf16, LoRA r=8")
    result = {
        "cached_vs_uncached": round(cached / uncached, 3),
        "vs_hf_llama": round(cached / llama_tps, 3),
        "lora_reference_memory_ratio": round(with_ref / alone, 4),
        "lora_reference_memory_ratio_chatglm3_6b": round(big_with_ref / big_alone, 4),
        "cpu_tokens_per_s": {"cached": round(cached, 1), "uncached": round(uncached, 1), "hf_llama": round(llama_tps, 1)},
    }
    if torch.cuda.is_available() and not args.no_gpu:
        gpu = gpu_run(args)
        print(f"GPU {gpu['gpu']}: chatglm3-6b shapes, random bf16 weights, batch 16, prompt {args.prompt}, 256 new tokens")
        row("native ChatGLM, KV cache (ours)", f"{gpu['gpu_chatglm3_6b_bf16_tokens_per_s']:.1f} tok/s")
        row("HF Llama generate, same shapes", f"{gpu['gpu_hf_llama_same_shapes_tokens_per_s']:.1f} tok/s")
        row("decode rate / memory-bandwidth bound", f"{gpu['gpu_decode_fraction_of_bandwidth_bound']:.3f}",
            f"bound {gpu['gpu_bandwidth_bound_tokens_per_s']:.0f} tok/s: weights + KV cache per step at "
            f"{gpu['gpu_copy_bandwidth_gb_s']:.0f} GB/s (device copy)")
        row("peak GPU memory (ChatGLM run)", f"{gpu['gpu_peak_memory_gib']:.2f} GiB",
            f"ChatGLM weights {gpu['gpu_chatglm_weights_gib']:.2f} GiB (+ the Llama's, resident)")
        result.update(gpu)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
