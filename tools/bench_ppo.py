"""Time and memory of one PPO iteration: our PPOModule against TRL 0.9.6's PPOTrainer.

    bash tools/setup_trl_venv.sh                      # once: .venv-trl with TRL 0.9.6 (the baseline)
    .venv/bin/python tools/bench_ppo.py [--batch 16 --prompt-tokens 64 --new-tokens 64 --iters 3]

Both sides get the same tiny Llama (built here from a LlamaConfig and saved with
`save_pretrained`, with a word-level tokenizer trained here on synthetic sentences; nothing is
downloaded), the same prompts (token ids from our chat format, every one exactly
--prompt-tokens long), the same sampling (temperature 1, no top-k/top-p, no stop token, so every
response is exactly --new-tokens long), the same LoRA (r, alpha, all seven linear layers) and the
same PPO settings (epochs, minibatch size, lr, clip ranges, vf coefficient, fixed k1 KL penalty,
GAE, whitened advantages, grad-norm clip). Rewards on both sides come from the evaluation
system's `EvaluatorPool` (SCIP worker processes) scoring the decoded responses against each
problem's answer and reference model.

- ours: a real `lightning.Trainer` fit of `PPOModule` (the production `build_trainer`, TensorBoard
  logging included), phases from the module's own `time/*` metrics, the iteration from a callback.
  Ours runs twice: with old log-probs and values kept by the sampling loop
  (`ppo.logprobs_from_sampling=true`, exact in this fp32 setting: the forward phase is the
  reference pass alone), and with the default second policy pass ("ours, recompute").
- TRL: `PPOTrainer.generate` (batched) -> pool scoring -> `PPOTrainer.step`, run by
  tools/bench_ppo_trl.py inside .venv-trl; its forward passes are timed by wrapping
  `batched_forward_pass`, the update is the rest of `step`.

Each side runs in a fresh subprocess: 1 warm-up iteration, then --iters timed ones; the table
shows medians. Memory on CPU is the peak RSS of that process (ru_maxrss) minus its RSS after
imports, so model, optimizer state, activations and caches count and the libraries' import cost
does not; with --device cuda it is the process's peak CUDA allocation (torch.cuda.max_memory_allocated).
--device cuda runs both sides on the first GPU (ours: the Trainer's `gpu` accelerator; TRL: its
Accelerator's device), both in fp32; it has not been run on a GPU yet.
The last line is one JSON object: {"time_vs_trl": ours/TRL, "memory_vs_trl": ours/TRL, and the same two
for "ours, recompute" as "recompute_time_vs_trl", "recompute_memory_vs_trl"}.
Targets: time <= 0.7, memory <= 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHASES = ("generate", "score", "forward", "update", "other", "total")
# every linear layer of a Llama block (what peft's "all-linear" picks), named so TRL gets the same
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WORDS = (
    "a factory makes chairs tables desks and shelves each week . every chair needs wood hours "
    "of labor and paint while a table needs more wood . the profit per unit is known and the "
    "plant has limited machine time storage space budget and workers . how many units of each "
    "product should it make to maximize total profit ? a farmer plants wheat corn and soy on "
    "acres of land with water fertilizer and tractor limits . minimize the cost of shipping goods "
    "from warehouses to stores so that demand is met and supply is not exceeded . a hospital "
    "schedules nurses in shifts at least some nurses must work on each day . choose which "
    "projects to fund with binary decisions under a budget . variables constraints objective "
    "subject to bounds integer end maximize minimize x y z + - * <= >= = : lp model optimal value"
).split()


# ----------------------------------------------------------------------------- the shared fixture


def synthetic_sentences(n: int, n_numbers: int, rng: random.Random) -> list[str]:
    """The tokenizer's corpus: sentences over WORDS and numbers, plus every number 0..n_numbers-1
    once, so the vocabulary is about n_numbers + 120 tokens (real LMs: 32k to 150k)."""
    numbers = [str(i) for i in range(n_numbers)]
    sentences = [" ".join(rng.choice(WORDS if rng.random() < 0.7 else numbers) for _ in range(rng.randint(8, 24)))
                 for _ in range(n)]
    return sentences + [" ".join(numbers[i : i + 100]) for i in range(0, n_numbers, 100)]


def build_tokenizer(sentences: list[str]):
    """A word-level fast tokenizer: one token per word or punctuation mark, <s> prepended."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    trainer = trainers.WordLevelTrainer(vocab_size=10**7, special_tokens=specials)  # every word seen, no cap
    tok.train_from_iterator(sentences + ["User : Assistant : System :"], trainer)
    bos = ("<s>", tok.token_to_id("<s>"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[bos])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


REFERENCE_LP = """Maximize
 obj: {a} x + {b} y
Subject To
 c1: x + y <= {c}
 c2: x - y <= {d}
Bounds
 0 <= x <= 100
 0 <= y <= 100
End
"""


def build_fixture(out: Path, s: dict) -> None:
    """Model + tokenizer dir, problems.jsonl (ours reads it), prompts.json (token ids for TRL), settings.json
    (`s` plus the vocab size it adds)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from solver_ppo.data.prompts import build_messages
    from solver_ppo.data.formats import Problem
    from solver_ppo.models.chat import chat_format_for

    rng = random.Random(s["seed"])
    tokenizer = build_tokenizer(synthetic_sentences(400, s["numbers"], rng))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=s["hidden"], intermediate_size=s["ffn"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(s["seed"])
    model_dir = out / "model"
    LlamaForCausalLM(config).save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)

    # Questions of exactly prompt_tokens tokens after the plain chat format: measure the template's
    # overhead once, then fill the question with that many words.
    chat = chat_format_for("plain", tokenizer, config)
    overhead = len(chat.encode_prompt(tokenizer, build_messages(Problem("x", "x", None), "", ""))) - 1
    n_words = s["prompt_tokens"] - overhead
    if n_words < 1:
        raise SystemExit(f"--prompt-tokens {s['prompt_tokens']} leaves no room for a question (template: {overhead})")
    problems, prompts = [], []
    for i in range(s["batch"] * (s["warmup"] + s["iters"])):
        question = " ".join(rng.choice(WORDS) for _ in range(n_words))
        a, b, c, d = (rng.randint(1, 9) for _ in range(4))
        problem = Problem(f"p{i}", question, None, REFERENCE_LP.format(a=a, b=b, c=c, d=d))
        ids = chat.encode_prompt(tokenizer, build_messages(problem, "", ""))
        if len(ids) != s["prompt_tokens"]:
            raise SystemExit(f"prompt {i} has {len(ids)} tokens, expected {s['prompt_tokens']}")
        problems.append({"id": problem.id, "question": question, "answer": None,
                         "reference_model": problem.reference_model})
        prompts.append(ids)
    with open(out / "problems.jsonl", "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in problems)
    (out / "prompts.json").write_text(json.dumps({"prompts": prompts, "problems": problems}))
    s["vocab"] = len(tokenizer)
    (out / "settings.json").write_text(json.dumps(s, indent=1))


# ----------------------------------------------------------------------------- memory


def rss_mb() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def used_memory_mb(device: str, rss_after_imports_mb: float) -> float:
    """What one side's run allocated: its peak CUDA allocation on a GPU, else peak RSS minus the RSS after imports."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mb() - rss_after_imports_mb


# ----------------------------------------------------------------------------- our side


def run_ours(fixture: Path, logprobs_from_sampling: bool) -> dict:
    """One Lightning fit of PPOModule: warm-up + timed iterations; per-iteration phase seconds."""
    import torch

    from solver_ppo.config import DataSettings, PPOSettings, TrainConfig, TrainerSettings
    from solver_ppo.evaluation import EvaluationConfig
    from solver_ppo.models.config import LoraSettings, ModelConfig, SamplingConfig

    s = json.loads((fixture / "settings.json").read_text())
    torch.set_num_threads(s["threads"])
    cfg = TrainConfig(
        seed=s["seed"],
        model=ModelConfig(family="auto", path=str(fixture / "model"), chat_format="plain",
                          lora=LoraSettings(r=s["lora_r"], alpha=s["lora_alpha"], target_modules=list(LORA_TARGETS))),
        sampling=SamplingConfig(max_new_tokens=s["new_tokens"], temperature=1.0, top_p=1.0, top_k=0, do_sample=True),
        ppo=PPOSettings(
            prompts_per_step=s["batch"], epochs=s["epochs"], minibatch_size=s["minibatch"], lr=s["lr"],
            max_grad_norm=s["max_grad_norm"], clip_low=s["clip"], clip_high=s["clip"], value_clip=s["clip"],
            vf_coef=s["vf_coef"], gamma=s["gamma"], lam=s["lam"], whiten_advantages=True,
            logprobs_from_sampling=logprobs_from_sampling,
        ),
        data=DataSettings(train=str(fixture / "problems.jsonl"), format="project", shuffle_buffer=1,
                          max_prompt_tokens=s["prompt_tokens"], system_prompt="", instruction=""),
        evaluation=EvaluationConfig(workers=s["workers"]),
        trainer=TrainerSettings(max_steps=s["warmup"] + s["iters"], root_dir=str(fixture / "logs"),
                                accelerator="gpu" if s["device"] == "cuda" else "cpu", devices=1,
                                enable_progress_bar=False, checkpoint_every=0, sample_log_every=0),
    )
    cfg.ppo.kl.coef = s["kl_coef"]

    return fit_timed(cfg, s)


def fit_timed(cfg, s: dict, optimizer_steps_per_iteration: int | None = None) -> dict:
    """One Lightning fit of PPOModule on `cfg`: per iteration, the module's phase seconds (time/*)
    and the iteration's wall and CPU seconds, the warm-up left out. Every response must be exactly
    s["new_tokens"] long (no stop tokens), as TRL's min_new_tokens makes its own. Memory counts from
    the RSS after every import, so the libraries' import cost does not count."""
    import lightning.pytorch as pl

    from solver_ppo.data.datamodule import PromptDataModule
    from solver_ppo.models.loading import load_model
    from solver_ppo.models.policy import PolicyWithValue
    from solver_ppo.ppo.module import PPOModule
    from solver_ppo.ppo.train import build_trainer

    rss0 = rss_mb()
    rows = cfg.ppo.prompts_per_step * cfg.ppo.samples_per_prompt

    class Timer(pl.Callback):
        def __init__(self):
            self.rows: list[dict] = []
            self.t0 = self.cpu0 = 0.0
            self.step0 = 0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.t0, self.cpu0, self.step0 = time.perf_counter(), time.process_time(), trainer.global_step

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            total = time.perf_counter() - self.t0
            steps = trainer.global_step - self.step0
            if optimizer_steps_per_iteration is not None and steps != optimizer_steps_per_iteration:
                raise RuntimeError(f"{steps} optimizer steps in one iteration, expected {optimizer_steps_per_iteration}")
            m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("time/")}
            lengths = module.last_rollout.response_mask.sum(-1)
            if len(lengths) != rows or not bool((lengths == s["new_tokens"]).all()):
                raise RuntimeError(f"response lengths {lengths.tolist()}, expected {rows} of {s['new_tokens']}")
            row = {"generate": m["time/generate"], "score": m["time/score_wait"], "forward": m["time/forward"],
                   "update": m["time/update"], "total": total, "cpu": time.process_time() - self.cpu0}
            row["other"] = total - sum(row[k] for k in ("generate", "score", "forward", "update"))
            self.rows.append(row)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    loaded = load_model(cfg.model)
    policy = PolicyWithValue(loaded.model, cfg.model.lora, pad_token_id=loaded.chat.pad_token_id, stop_token_ids=[])
    module = PPOModule(cfg, loaded, policy)
    timer = Timer()
    trainer = build_trainer(cfg, [timer])
    trainer.fit(module, datamodule=PromptDataModule(cfg.data, prompts_per_step=cfg.ppo.prompts_per_step, seed=cfg.seed))
    return {"iterations": timer.rows[s["warmup"]:], "memory_mb": used_memory_mb(s["device"], rss0),
            "peak_rss_mb": peak_rss_mb(), "import_rss_mb": rss0}


def run_side(cmd: list[str], name: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{name} side failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_rounds(sides: list[tuple[str, list[str]]], settings: dict, rounds: int) -> dict[str, list[dict]]:
    """Build the fixture (which adds settings["vocab"]), then run every side `rounds` times in fresh
    processes. Rounds alternate the order of the sides, so a change in the machine's load hits all of them."""
    runs: dict[str, list[dict]] = {name: [] for name, _ in sides}
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        fixture = Path(tmp)
        build_fixture(fixture, settings)
        for r in range(rounds):
            for name, cmd in sides if r % 2 == 0 else sides[::-1]:
                runs[name].append(run_side(cmd + ["--fixture", str(fixture)], name))
    return runs


def pool_rounds(results: list[dict]) -> dict:
    """All rounds' timed iterations together; memory: the median over rounds."""
    return {
        "iterations": [row for r in results for row in r["iterations"]],
        "memory_mb": statistics.median(r["memory_mb"] for r in results),
    }


def medians(result: dict) -> dict[str, float]:
    return {k: statistics.median(row[k] for row in result["iterations"]) for k in PHASES}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", choices=["ours"], help="internal: run one side on --fixture and print its JSON")
    p.add_argument("--fixture", type=Path)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--minibatch", type=int, default=4)
    p.add_argument("--numbers", type=int, default=200, help="numbers in the tokenizer's corpus: sets the vocab size")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--ffn", type=int, default=688)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="fresh processes per side, alternating which goes first")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads on both sides (1: a shared 2-core machine makes multi-threaded timings erratic)")
    p.add_argument("--workers", type=int, default=2, help="solver worker processes on both sides")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where both sides run (cuda: the first GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recompute-logprobs", action="store_true", help="internal: --side ours with a second policy pass")
    p.add_argument("--trl-python", type=Path, default=ROOT / ".venv-trl" / "bin" / "python")
    args = p.parse_args()

    if args.side == "ours":
        print(json.dumps(run_ours(args.fixture, logprobs_from_sampling=not args.recompute_logprobs)))
        return 0

    if not args.trl_python.is_file():
        raise SystemExit(f"{args.trl_python} not found; run `bash tools/setup_trl_venv.sh` first")
    settings = {
        "batch": args.batch, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "epochs": args.epochs, "minibatch": args.minibatch, "layers": args.layers, "hidden": args.hidden,
        "ffn": args.ffn, "numbers": args.numbers, "heads": args.heads, "kv_heads": args.kv_heads,
        "warmup": args.warmup, "iters": args.iters,
        "threads": args.threads, "workers": args.workers, "seed": args.seed, "device": args.device,
        "lora_r": 8, "lora_alpha": 16, "lora_targets": LORA_TARGETS, "lr": 1e-5, "kl_coef": 0.05,
        "clip": 0.2, "vf_coef": 0.1, "gamma": 1.0, "lam": 0.95, "max_grad_norm": 1.0,
    }
    ours_cmd = [sys.executable, str(Path(__file__).resolve()), "--side", "ours"]
    trl_cmd = [str(args.trl_python), str(ROOT / "tools" / "bench_ppo_trl.py")]
    sides = [("ours", ours_cmd), ("ours, recompute", ours_cmd + ["--recompute-logprobs"]), ("TRL", trl_cmd)]
    runs = run_rounds(sides, settings, args.rounds)
    pooled = {name: pool_rounds(runs[name]) for name in runs}
    times = {name: medians(result) for name, result in pooled.items()}
    memory = {name: result["memory_mb"] for name, result in pooled.items()}
    trl = times["TRL"]

    print(f"PPO iteration: batch {args.batch}, prompt {args.prompt_tokens} + {args.new_tokens} new tokens, "
          f"{args.epochs} epochs x minibatch {args.minibatch}, LoRA r=8; Llama {args.layers}x{args.hidden}, "
          f"vocab {settings['vocab']}; {args.device}, {args.threads} torch threads, {args.workers} solver workers; median of "
          f"{args.rounds} rounds x {args.iters} iterations, each round after {args.warmup} warm-up")
    print("ours: old log-probs and values kept by the sampling loop; ours, recompute: a second policy pass (the default)")
    print(f"{'phase (s)':<26}{'ours':>10}{'recompute':>11}{'TRL 0.9.6':>11}{'ours/TRL':>10}{'recomp./TRL':>13}")
    labels = {"generate": "generation", "score": "scoring (wait)", "forward": "ref/value/old-logp pass",
              "update": "PPO update", "other": "other (adv., logging)", "total": "iteration"}

    def ratio(x: float, y: float) -> str:
        return f"{x / y:.2f}" if y > 0 else "-"

    for k in PHASES:
        a, c = times["ours"][k], times["ours, recompute"][k]
        print(f"{labels[k]:<26}{a:>10.3f}{c:>11.3f}{trl[k]:>11.3f}{ratio(a, trl[k]):>10}{ratio(c, trl[k]):>13}")
    a, c, b = memory["ours"], memory["ours, recompute"], memory["TRL"]
    label = "peak CUDA memory" if args.device == "cuda" else "peak RSS - after imports"
    print(f"{label:<26}{a:>9.0f}M{c:>10.0f}M{b:>10.0f}M{ratio(a, b):>10}{ratio(c, b):>13}")
    print(json.dumps({
        "time_vs_trl": round(times["ours"]["total"] / trl["total"], 3), "memory_vs_trl": round(a / b, 3),
        "recompute_time_vs_trl": round(times["ours, recompute"]["total"] / trl["total"], 3),
        "recompute_memory_vs_trl": round(c / b, 3),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
