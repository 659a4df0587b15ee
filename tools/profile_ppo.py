"""Where the time of our PPO iteration goes, by operator: how much of each phase is matrix products.

    .venv/bin/python tools/profile_ppo.py [--threads 1 --top 8]

The PPO benchmark's fixture (tools/bench_ppo.py: tiny Llama 4 x 256, vocab 321, LoRA r=8 on all
seven linear layers, 16 prompts of 64 tokens) under `torch.profiler`: sampling 64 new tokens
(adapter merged, log-probs kept, as the benchmark's "ours") and the update phase's work, 2 epochs
x 4 minibatches of forward, backward and AdamW step through `PolicyWithValue`. For each phase:
wall seconds (unprofiled, median of 3), the CPU time of matrix products (aten::mm, addmm, bmm)
under the profiler and their share, and the top operators. Matmul time is the floor no
implementation of the same arithmetic avoids, which is what bounds the time ratio against TRL.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_ppo import LORA_TARGETS, build_fixture  # noqa: E402

from solver_ppo.models.config import LoraSettings, ModelConfig, SamplingConfig  # noqa: E402
from solver_ppo.models.loading import load_model  # noqa: E402
from solver_ppo.models.policy import PolicyWithValue  # noqa: E402

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def phase_report(name: str, run, top: int) -> dict:
    run()  # warm-up
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        run()
        walls.append(time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / 1e6
    wall = statistics.median(walls)
    print(f"\n{name}: {wall:.3f} s wall; under the profiler {total:.3f} s of CPU time, matrix products "
          f"{matmul:.3f} s ({matmul / total:.0%})")
    for e in events[:top]:
        print(f"  {e.key[:48]:<50}{e.self_cpu_time_total / 1e6:8.3f} s {e.count:7d} calls")
    return {"wall_s": round(wall, 3), "profiled_s": round(total, 3), "matmul_s": round(matmul, 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--top", type=int, default=8, help="operators listed per phase")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    s = {"batch": 16, "prompt_tokens": 64, "new_tokens": 64, "layers": 4, "hidden": 256, "ffn": 688, "numbers": 200,
         "heads": 4, "kv_heads": 2, "warmup": 1, "iters": 0, "seed": 0}
    with tempfile.TemporaryDirectory(prefix="profile_ppo_") as tmp:
        build_fixture(Path(tmp), s)
        lora = LoraSettings(r=8, alpha=16, target_modules=list(LORA_TARGETS))
        loaded = load_model(ModelConfig(family="auto", path=str(Path(tmp) / "model"), chat_format="plain", lora=lora))
        prompts = json.loads((Path(tmp) / "prompts.json").read_text())["prompts"][: s["batch"]]
    policy = PolicyWithValue(loaded.model, lora, pad_token_id=loaded.chat.pad_token_id, stop_token_ids=[])
    sampling = SamplingConfig(max_new_tokens=s["new_tokens"], temperature=1.0, top_p=1.0, top_k=0, do_sample=True)
    generator = torch.Generator().manual_seed(0)
    sequences = policy.generate(prompts, sampling, generator=generator).sequences  # (16, 128)
    mask = torch.ones_like(sequences)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5)

    def sample():
        policy.eval()
        policy.generate(prompts, sampling, generator=generator, keep_logprobs=True)

    def update():  # the shape of the benchmark's update: 2 epochs x 4 minibatches of 4 rows
        policy.train()
        for _ in range(2):
            for rows in torch.randperm(len(sequences), generator=generator).split(4):
                logprobs, values, _ = policy(sequences[rows], mask[rows], s["prompt_tokens"], 1.0, entropy_grad=False)
                (-logprobs.mean() + values.pow(2).mean()).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

    print(f"tools/profile_ppo.py: {args.threads} torch thread(s), torch {torch.__version__}")
    result = {"generation": phase_report("generation", sample, args.top), "update": phase_report("update", update, args.top)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
