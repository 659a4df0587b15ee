"""The TRL side of tools/bench_grpo.py: TRL's current GRPOTrainer; runs inside .venv-trl-grpo
(tools/setup_trl_grpo_venv.sh).

    .venv-trl-grpo/bin/python tools/bench_grpo_trl.py --fixture DIR     (DIR written by bench_grpo.py)

`GRPOTrainer.train()` as a user runs it on one CPU process, at its best there: fp32 (bf16 off),
no gradient checkpointing, transformers' `generate` with its KV cache over the whole generation
batch (no vLLM), one generation per optimizer step (steps_per_generation = gradient accumulation,
num_iterations 1, so no old-log-prob pass), the peft LoRA model with the adapter-disabled policy
as the reference. The reward function scores the decoded completions with the evaluation
system's `EvaluatorPool`, the same code and worker count as ours. Phase times come from wrapping
the trainer's own methods: generation (`_generate_single_turn`), the reference pass
(`_get_per_token_logps_and_entropies` without grad), scoring (the reward function); the update
is the rest of the optimizer step outside `_prepare_inputs`. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from bench_ppo import peak_rss_mb, rss_mb, used_memory_mb  # stdlib-only module in this folder

import torch  # noqa: E402  (after the RSS helpers: only what the run allocates counts)
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from solver_ppo.evaluation import EvaluationConfig, EvaluatorPool, Reference  # noqa: E402


class PhaseClock:
    """Seconds spent in wrapped methods since the last `reset`, by phase."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    def reset(self) -> None:
        self.seconds.clear()

    def wrap(self, obj, name: str, phase: str, only_if=lambda: True) -> None:
        method = getattr(obj, name)

        def timed(*args, **kwargs):
            if not only_if():
                return method(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - t0

        setattr(obj, name, timed)


def prompt_texts(tokenizer, prompts: list[list[int]]) -> list[str]:
    """The fixture's prompts as text that this tokenizer encodes back to exactly the same ids
    (TRL tokenizes text prompts itself), checked one by one. No clean-up of spaces: "end . ." must
    not become "end..", one unknown word to the word-level tokenizer."""
    texts = [tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) for ids in prompts]
    for i, (text, ids) in enumerate(zip(texts, prompts)):
        again = tokenizer(text)["input_ids"]
        if again != ids:
            raise SystemExit(f"prompt {i}: TRL's tokenizer gives {len(again)} ids, not the fixture's {len(ids)}")
    return texts


def run(fixture: Path) -> dict:
    s = json.loads((fixture / "settings.json").read_text())
    data = json.loads((fixture / "prompts.json").read_text())
    torch.set_num_threads(s["threads"])
    rss0 = rss_mb()

    model_dir = str(fixture / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    rows = s["prompts"] * s["group"]  # completions per optimizer step
    n = s["new_tokens"]
    problems = data["problems"]
    dataset = Dataset.from_list([
        {"prompt": text, "reference_model": p["reference_model"], "answer": p["answer"]}
        for text, p in zip(prompt_texts(tokenizer, data["prompts"]), problems)
    ])
    config = GRPOConfig(
        output_dir=str(fixture / "trl_out"), seed=s["seed"], use_cpu=s["device"] == "cpu",
        bf16=False, fp16=False, gradient_checkpointing=False, disable_dropout=True,
        per_device_train_batch_size=s["microbatch"], gradient_accumulation_steps=rows // s["microbatch"],
        num_generations=s["group"], num_iterations=1, shuffle_dataset=False,
        # min_new_tokens = max: EOS is masked until the end, so every completion has n tokens (ours: no stop token)
        max_completion_length=n, temperature=1.0, top_p=1.0, top_k=0, generation_kwargs={"min_new_tokens": n},
        loss_type="grpo", scale_rewards="group", beta=s["kl_coef"], epsilon=s["clip"],
        learning_rate=s["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=s["max_grad_norm"], max_steps=s["warmup"] + s["iters"],
        logging_steps=1, report_to="none", save_strategy="no", log_completions=False, dataloader_num_workers=0,
    )
    lora = LoraConfig(r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=0.0, target_modules=s["lora_targets"],
                      bias="none", task_type="CAUSAL_LM")

    clock = PhaseClock()
    step_rows: list[dict] = []
    with EvaluatorPool(EvaluationConfig(workers=s["workers"])) as pool:

        def solver_reward(prompts, completions, completion_ids, reference_model, answer, **kwargs) -> list[float]:
            t0 = time.perf_counter()
            lengths = [len(ids) for ids in completion_ids]
            if len(lengths) != rows or any(length != n for length in lengths):
                raise RuntimeError(f"completion lengths {lengths}, expected {rows} of {n}")
            refs = [Reference.from_answer(a, ref) for a, ref in zip(answer, reference_model)]
            items = list(zip(completions, refs))
            scores = [r.reward for r in pool.score_many(items)]
            clock.seconds["score"] += time.perf_counter() - t0
            return scores

        class StepTimer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                clock.reset()
                self.t0, self.cpu0 = time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kwargs):
                total = time.perf_counter() - self.t0
                t = clock.seconds
                if not t["generate"]:
                    raise RuntimeError(f"optimizer step {state.global_step} generated nothing: expected one per step")
                row = {"generate": t["generate"], "score": t["score"], "forward": t["forward"],
                       "update": total - t["prepare"], "total": total, "cpu": time.process_time() - self.cpu0}
                row["other"] = total - sum(row[k] for k in ("generate", "score", "forward", "update"))
                step_rows.append(row)

        trainer = GRPOTrainer(model=model, reward_funcs=solver_reward, args=config, train_dataset=dataset,
                              processing_class=tokenizer, peft_config=lora, callbacks=[StepTimer()])
        clock.wrap(trainer, "_generate_single_turn", "generate")
        def reference_pass() -> bool:  # the no-grad calls; the loss's own run with grad
            return not torch.is_grad_enabled()

        clock.wrap(trainer, "_get_per_token_logps_and_entropies", "forward", only_if=reference_pass)
        clock.wrap(trainer, "_prepare_inputs", "prepare")
        torch.set_num_threads(s["threads"])
        trainer.train()
    if len(step_rows) != s["warmup"] + s["iters"]:
        raise RuntimeError(f"{len(step_rows)} optimizer steps, expected {s['warmup'] + s['iters']}")
    return {"iterations": step_rows[s["warmup"]:], "memory_mb": used_memory_mb(s["device"], rss0),
            "peak_rss_mb": peak_rss_mb(), "import_rss_mb": rss0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fixture", type=Path, required=True)
    print(json.dumps(run(p.parse_args().fixture)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
