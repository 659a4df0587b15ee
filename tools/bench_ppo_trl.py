"""The TRL 0.9.6 side of tools/bench_ppo.py; runs inside .venv-trl (tools/setup_trl_venv.sh).

    .venv-trl/bin/python tools/bench_ppo_trl.py --fixture DIR     (DIR written by bench_ppo.py)

TRL's own loop at its best on one process: `PPOTrainer.generate` over the whole batch at once
(batch_size = the PPO batch, HF generate with its KV cache), scoring with the evaluation
system's `EvaluatorPool`, then `PPOTrainer.step`. The peft LoRA model with `ref_model=None`
makes the reference the adapter-disabled policy, as on our side. Phase times inside `step` come
from TRL's own `time/ppo/*` stats. With --device cuda in bench_ppo.py, TRL's Accelerator puts the
model on the GPU (nothing to set here). Prints one JSON line: per-iteration seconds and RSS numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_ppo import rss_mb, used_memory_mb  # stdlib-only module in this folder

import torch  # noqa: E402  (after the RSS helpers: only what the run allocates counts)
from peft import LoraConfig  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, set_seed  # noqa: E402

from solver_ppo.evaluation import EvaluationConfig, EvaluatorPool, Reference  # noqa: E402


def run(fixture: Path) -> dict:
    s = json.loads((fixture / "settings.json").read_text())
    data = json.loads((fixture / "prompts.json").read_text())
    torch.set_num_threads(s["threads"])
    rss0 = rss_mb()
    set_seed(s["seed"])

    model_dir = str(fixture / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    lora = LoraConfig(r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=0.0, target_modules=s["lora_targets"],
                      bias="none", task_type="CAUSAL_LM")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_dir, peft_config=lora, local_files_only=True)
    config = PPOConfig(
        seed=s["seed"], batch_size=s["batch"], mini_batch_size=s["minibatch"], gradient_accumulation_steps=1,
        ppo_epochs=s["epochs"], learning_rate=s["lr"], adap_kl_ctrl=False, init_kl_coef=s["kl_coef"], kl_penalty="kl",
        gamma=s["gamma"], lam=s["lam"], cliprange=s["clip"], cliprange_value=s["clip"], vf_coef=s["vf_coef"],
        max_grad_norm=s["max_grad_norm"], early_stopping=False,
    )
    trainer = PPOTrainer(config, model, ref_model=None, tokenizer=tokenizer)
    n = s["new_tokens"]
    # min_new_tokens = max_new_tokens: EOS is masked until the end, so every response has n tokens
    gen_kwargs = dict(min_new_tokens=n, max_new_tokens=n, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                      pad_token_id=tokenizer.pad_token_id)

    rows = []
    B = s["batch"]
    with EvaluatorPool(EvaluationConfig(workers=s["workers"])) as pool:
        for it in range(s["warmup"] + s["iters"]):
            queries = [torch.tensor(ids) for ids in data["prompts"][it * B : (it + 1) * B]]
            problems = data["problems"][it * B : (it + 1) * B]
            t0 = time.perf_counter()
            responses = trainer.generate(queries, batch_size=B, return_prompt=False, **gen_kwargs)
            texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
            t1 = time.perf_counter()
            if any(len(r) != n for r in responses):
                raise RuntimeError(f"response lengths {[len(r) for r in responses]}, expected all {n}")
            items = [(text, Reference.from_answer(p["answer"], p["reference_model"]))
                     for text, p in zip(texts, problems)]
            scores = [torch.tensor(r.reward) for r in pool.score_many(items)]
            t2 = time.perf_counter()
            stats = trainer.step(queries, responses, scores)
            t3 = time.perf_counter()
            row = {"generate": t1 - t0, "score": t2 - t1, "forward": stats["time/ppo/forward_pass"],
                   "update": stats["time/ppo/optimize_step"], "total": t3 - t0}
            row["other"] = row["total"] - sum(row[k] for k in ("generate", "score", "forward", "update"))
            rows.append(row)
    return {"iterations": rows[s["warmup"]:], "memory_mb": used_memory_mb(s["device"], rss0)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fixture", type=Path, required=True)
    print(json.dumps(run(p.parse_args().fixture)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
