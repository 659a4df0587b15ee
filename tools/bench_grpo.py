"""Time per optimizer step and peak memory of GRPO: ours (PPOModule with ppo.advantage=grpo)
against TRL's current GRPOTrainer, side by side in one run.

    bash tools/setup_trl_grpo_venv.sh        # once: .venv-trl-grpo with TRL 1.16.0 (the baseline)
    .venv/bin/python tools/bench_grpo.py [--prompts 4 --group 4 --microbatch 4 --numbers 32000 --steps 3]

Both sides get the same tiny Llama with a 32k vocabulary (built by tools/bench_ppo.py's fixture:
a LlamaConfig saved with `save_pretrained` and a word-level tokenizer trained on synthetic
sentences; nothing is downloaded; ours loads it as an HF causal LM with model.family=auto), the
same prompts (--prompts per step, every one exactly --prompt-tokens long, in file order), the
same group size (--group samples per prompt), the same sampling (temperature 1, no top-k/top-p,
no stop token on ours and `min_new_tokens` on TRL's, so every completion is exactly --new-tokens
long), the same LoRA (r 8, alpha 16, all seven linear layers; the reference is the policy with
the adapter off), the same GRPO settings (advantages: score minus the group mean over the group
std; the k3 KL to the reference as a loss term with the same beta; token ratios clipped at 0.2;
each response's token mean, averaged over responses; AdamW at a constant lr, grad-norm clip 1)
and the same optimizer steps: one per generation batch of prompts x group completions, with
--microbatch completions per forward/backward and gradient accumulation over the rest. Rewards
on both sides come from the evaluation system's `EvaluatorPool` (--workers SCIP processes)
scoring the decoded completions against each problem's reference model.

- ours: a real `lightning.Trainer` fit of `PPOModule` (the production `build_trainer`, TensorBoard
  included), with the old log-probs kept by the sampling loop (`ppo.logprobs_from_sampling=true`:
  TRL skips that pass too when each batch is used for one optimizer step), phases from the
  module's `time/*` metrics. "ours, recompute" is the same with the default second policy pass.
- TRL: `GRPOTrainer.train()` run by tools/bench_grpo_trl.py inside .venv-trl-grpo.

Each side runs in fresh subprocesses, --rounds alternating rounds of --warmup + --steps optimizer
steps (the step time runs from the start of an optimizer step, generation included, to its end;
start-up and model loading are not in it); the table shows medians, and also the CPU seconds
the side's process used per step (all its threads), which a shared machine's load disturbs less
than wall time. Memory is the peak RSS of the side's process (ru_maxrss) minus its RSS after
imports (the libraries' import cost does not count; both raw numbers are printed too). The
solver workers are separate processes on both sides, in neither figure. The last line is one
JSON object: {"time_vs_trl_grpo": ours/TRL, "memory_vs_trl_grpo": ours/TRL,
"cpu_time_vs_trl_grpo", "recompute_time_vs_trl_grpo", "recompute_memory_vs_trl_grpo"}.
Targets: time <= 0.7, memory <= 1.0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_ppo import (  # noqa: E402  (this folder)
    LORA_TARGETS, PHASES, fit_timed, medians, run_rounds,
)


def run_ours(fixture: Path, advantage: str, logprobs_from_sampling: bool) -> dict:
    """One Lightning fit of PPOModule: warm-up + timed optimizer steps (one per iteration); phase seconds."""
    import torch

    from solver_ppo.config import DataSettings, PPOSettings, TrainConfig, TrainerSettings
    from solver_ppo.evaluation import EvaluationConfig
    from solver_ppo.models.config import LoraSettings, ModelConfig, SamplingConfig

    s = json.loads((fixture / "settings.json").read_text())
    torch.set_num_threads(s["threads"])
    rows = s["prompts"] * s["group"]
    ppo = PPOSettings(
        prompts_per_step=s["prompts"], samples_per_prompt=s["group"], advantage=advantage, epochs=1,
        minibatch_size=s["microbatch"], grad_accum=rows // s["microbatch"], lr=s["lr"],
        max_grad_norm=s["max_grad_norm"],
        clip_low=s["clip"], clip_high=s["clip"], whiten_advantages=False, logprobs_from_sampling=logprobs_from_sampling,
    )
    ppo.kl.coef = s["kl_coef"]
    if advantage == "grpo":  # TRL's loss_type="grpo", scale_rewards="group", beta as a k3 loss term
        ppo.scale_rewards, ppo.loss_aggregation, ppo.ratio = "group", "sequence_mean", "token"
        ppo.kl.placement, ppo.kl.estimator = "loss", "k3"
    cfg = TrainConfig(
        seed=s["seed"],
        model=ModelConfig(family="auto", path=str(fixture / "model"), chat_format="plain",
                          lora=LoraSettings(r=s["lora_r"], alpha=s["lora_alpha"], target_modules=list(LORA_TARGETS))),
        sampling=SamplingConfig(max_new_tokens=s["new_tokens"], temperature=1.0, top_p=1.0, top_k=0, do_sample=True),
        ppo=ppo,
        data=DataSettings(train=str(fixture / "problems.jsonl"), format="project", shuffle_buffer=1,
                          max_prompt_tokens=s["prompt_tokens"], system_prompt="", instruction=""),
        evaluation=EvaluationConfig(workers=s["workers"]),
        trainer=TrainerSettings(max_steps=s["warmup"] + s["iters"], root_dir=str(fixture / "logs"),
                                accelerator="gpu" if s["device"] == "cuda" else "cpu", devices=1,
                                enable_progress_bar=False, checkpoint_every=0, sample_log_every=0),
    )

    return fit_timed(cfg, s, optimizer_steps_per_iteration=1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", choices=["ours"], help="internal: run one side on --fixture and print its JSON")
    p.add_argument("--fixture", type=Path)
    p.add_argument("--recompute-logprobs", action="store_true", help="internal: --side ours with a second policy pass")
    p.add_argument("--prompts", type=int, default=4, help="prompts per optimizer step")
    p.add_argument("--group", type=int, default=4, help="completions per prompt (TRL's num_generations)")
    p.add_argument("--microbatch", type=int, default=4,
                   help="completions per forward/backward (TRL: per_device_train_batch_size; ours: minibatch_size)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64, help="completion length (TRL's max_completion_length)")
    p.add_argument("--beta", type=float, default=0.05, help="KL coefficient (k3, a loss term) on both sides")
    p.add_argument("--ours-advantage", choices=["grpo", "rloo"], default="grpo",
                   help="our estimator (rloo: a stand-in where ppo.advantage=grpo is not available)")
    p.add_argument("--numbers", type=int, default=32000, help="numbers in the tokenizer's corpus: sets the vocab size")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--ffn", type=int, default=688)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1, help="optimizer steps before the timed ones")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per process")
    p.add_argument("--rounds", type=int, default=2, help="fresh processes per side, alternating which goes first")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads on both sides (1: a shared 2-core machine makes multi-threaded timings erratic)")
    p.add_argument("--workers", type=int, default=2, help="solver worker processes on both sides")
    p.add_argument("--no-recompute", action="store_true", help="skip the 'ours, recompute' side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trl-python", type=Path, default=ROOT / ".venv-trl-grpo" / "bin" / "python")
    args = p.parse_args()

    if args.side == "ours":
        settings = json.loads((args.fixture / "settings.json").read_text())
        print(json.dumps(run_ours(args.fixture, settings["ours_advantage"], not args.recompute_logprobs)))
        return 0

    if not args.trl_python.is_file():
        raise SystemExit(f"{args.trl_python} not found; run `bash tools/setup_trl_grpo_venv.sh` first")
    rows = args.prompts * args.group
    if args.group < 2 or rows % args.microbatch:
        raise SystemExit(f"--group must be >= 2 and --prompts x --group ({rows}) a multiple of --microbatch "
                         f"({args.microbatch})")
    settings = {
        # build_fixture writes batch x (warmup + iters) problems: here `batch` is the prompts per step
        "batch": args.prompts, "prompts": args.prompts, "group": args.group, "microbatch": args.microbatch,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "layers": args.layers,
        "hidden": args.hidden, "ffn": args.ffn, "numbers": args.numbers, "heads": args.heads, "kv_heads": args.kv_heads,
        "warmup": args.warmup, "iters": args.steps, "threads": args.threads, "workers": args.workers,
        "seed": args.seed, "device": "cpu", "ours_advantage": args.ours_advantage,
        "lora_r": 8, "lora_alpha": 16, "lora_targets": LORA_TARGETS, "lr": 1e-5, "kl_coef": args.beta,
        "clip": 0.2, "max_grad_norm": 1.0,
    }
    ours_cmd = [sys.executable, str(Path(__file__).resolve()), "--side", "ours"]
    trl_cmd = [str(args.trl_python), str(ROOT / "tools" / "bench_grpo_trl.py")]
    sides = [("ours", ours_cmd)]
    if not args.no_recompute:
        sides.append(("ours, recompute", ours_cmd + ["--recompute-logprobs"]))
    sides.append(("TRL", trl_cmd))
    runs = run_rounds(sides, settings, args.rounds)
    vocab = settings["vocab"]

    def pooled(name: str) -> dict:
        return {"iterations": [row for r in runs[name] for row in r["iterations"]]}

    def median_of(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    names = [name for name, _ in sides]
    times = {name: medians(pooled(name)) for name in names}
    trl = times["TRL"]
    ours_label = f"ours ({args.ours_advantage})"
    print(f"GRPO optimizer step: {args.prompts} prompts x {args.group} completions, prompt {args.prompt_tokens} + "
          f"{args.new_tokens} new tokens, microbatch {args.microbatch} x {rows // args.microbatch} accumulated, "
          f"beta {args.beta}, LoRA r=8; Llama {args.layers}x{args.hidden}, vocab {vocab}; cpu, {args.threads} torch "
          f"threads, {args.workers} solver workers; median of {args.rounds} rounds x {args.steps} steps, each round "
          f"after {args.warmup} warm-up; TRL: GRPOTrainer in {args.trl_python.parent.parent.name}")
    header = f"{'phase (s)':<28}{ours_label:>14}" + (f"{'recompute':>11}" if "ours, recompute" in times else "")
    print(header + f"{'TRL':>10}{'ours/TRL':>10}" + (f"{'recomp./TRL':>13}" if "ours, recompute" in times else ""))
    labels = {"generate": "generation", "score": "scoring (wait)", "forward": "no-grad pass (ref/old logp)",
              "update": "update (fwd+bwd+optim)", "other": "other", "total": "optimizer step"}

    def ratio(x: float, y: float) -> str:
        return f"{x / y:.2f}" if y > 0 else "-"

    def line(label: str, values: dict[str, float], fmt: str, unit: str = "") -> None:
        out = f"{label:<28}{format(values['ours'], fmt) + unit:>14}"
        if "ours, recompute" in values:
            out += f"{format(values['ours, recompute'], fmt) + unit:>11}"
        out += f"{format(values['TRL'], fmt) + unit:>10}{ratio(values['ours'], values['TRL']):>10}"
        if "ours, recompute" in values:
            out += f"{ratio(values['ours, recompute'], values['TRL']):>13}"
        print(out)

    for k in PHASES:
        line(labels[k], {name: times[name][k] for name in names}, ".3f")
    cpu = {name: statistics.median(row["cpu"] for row in pooled(name)["iterations"]) for name in names}
    line("step, CPU s of the process", cpu, ".3f")
    memory = {name: median_of(name, "memory_mb") for name in names}
    line("peak RSS - after imports", memory, ".0f", "M")
    line("peak RSS (process)", {name: median_of(name, "peak_rss_mb") for name in names}, ".0f", "M")
    line("RSS after imports", {name: median_of(name, "import_rss_mb") for name in names}, ".0f", "M")
    result = {"time_vs_trl_grpo": round(times["ours"]["total"] / trl["total"], 3),
              "memory_vs_trl_grpo": round(memory["ours"] / memory["TRL"], 3),
              "cpu_time_vs_trl_grpo": round(cpu["ours"] / cpu["TRL"], 3)}
    if "ours, recompute" in times:
        result["recompute_time_vs_trl_grpo"] = round(times["ours, recompute"]["total"] / trl["total"], 3)
        result["recompute_memory_vs_trl_grpo"] = round(memory["ours, recompute"] / memory["TRL"], 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
