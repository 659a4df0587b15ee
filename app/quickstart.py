"""`python -m app quickstart`: the whole idea on a CPU in minutes.

1. Synthetic problems from the config's seed: the held-out set, and PPO prompts that share no
   problem with it or with the starter's SFT data.
2. The committed starter policy (a tiny ChatGLM after SFT, `checkpoints/quickstart-sft`) is
   evaluated greedily on the held-out set.
3. PPO from that starter against the SCIP-based score (configs/quickstart.yaml).
4. The PPO policy is evaluated on the same held-out set.
5. A table SFT vs SFT + PPO, `logs/quickstart/results.json`, and a PNG of reward, accuracy and
   KL over the PPO steps next to the TensorBoard run.

With `rollout.turns=K` (feedback PPO) both policies are evaluated over K turns, each answer
followed by the evaluation's feedback: the tables add accuracy after each turn, and results.json
keeps `accuracy` (the starter: its first answer; the PPO policy: its last) and `accuracy_by_turn`.
Both rows also keep `headroom`: among the wrong first answers, how many their own verdict exposes
(an error at a line, infeasible, every variable 0, ...), the most that feedback can repair.

With `evaluation.labels=votes` PPO never reads the prompts' answers (label-free, docs/algorithms.md);
results.json says which `labels` trained, and `vote_label_accuracy` (the share of labelled groups
whose vote was the true answer, over training). The held-out set is scored against the true answers.

With `--answer-format pyscipopt` the same steps run on code answers: the starter
`checkpoints/quickstart-sft-pyscipopt` writes pyscipopt programs (configs/quickstart_pyscipopt.yaml),
every answer runs in the sandbox and is scored on the model it built, and the results go to
`logs/quickstart-pyscipopt`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from solver_ppo.config import load_config

ROOT = Path(__file__).resolve().parents[1]
# answer format -> (its PPO config, its output directory); each config names its own starter
FORMATS = {
    "lp": (ROOT / "configs" / "quickstart.yaml", Path("logs") / "quickstart"),
    "pyscipopt": (ROOT / "configs" / "quickstart_pyscipopt.yaml", Path("logs") / "quickstart-pyscipopt"),
}
STARTER_PROBLEMS = 9000  # `make-data --train 9000` in tools/build_starter.sh


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default=None,
                        help="PPO config (default: configs/quickstart.yaml, or configs/quickstart_pyscipopt.yaml "
                             "with --answer-format pyscipopt)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the PPO config")
    parser.add_argument("--heldout", type=int, default=200, help="held-out problems to evaluate on")
    parser.add_argument("--train-problems", type=int, default=800,
                        help="synthetic prompts for PPO (800 = 100 steps x 8; the easy assignment problems the starter "
                             "has not seen run out at about 900)")
    parser.add_argument("--starter-problems", type=int, default=STARTER_PROBLEMS,
                        help="how many problems the starter was fine-tuned on (tools/build_starter.sh): PPO prompts avoid them")
    parser.add_argument("--answer-format", choices=sorted(FORMATS), default="lp",
                        help="how the starter answers: LP model text (default) or pyscipopt programs, run in the "
                             "sandbox and scored on the model they build")
    parser.add_argument("--out", default=None,
                        help="where the data, the evaluation rows and results.json go (default: logs/quickstart, or "
                             "logs/quickstart-pyscipopt with --answer-format pyscipopt); when given, the PPO run "
                             "(TensorBoard, checkpoints, curves.png) goes there too, to OUT/run_name/version_N, "
                             "unless trainer.root_dir is set; else to logs/run_name/version_N")


def make_data(out: Path, n_train: int, n_heldout: int, seed: int, difficulty: str, starter_problems: int) -> tuple[Path, Path]:
    """PPO prompts and held-out problems. The held-out set is the starter's (the SFT never saw it).
    The PPO prompts come from their own stream and leave out the starter's SFT problems, which are
    rebuilt from the same seed (`make_splits`, as `make-data` draws them): PPO practises on
    problems new to the starter, as the held-out ones are."""
    from solver_ppo.data.synthetic import generate, make_splits, signature, write_jsonl

    out.mkdir(parents=True, exist_ok=True)
    starter, heldout = make_splits(starter_problems, n_heldout, seed, difficulty)
    seen = {signature(item) for item in starter + heldout}
    train = generate(n_train, seed, difficulty, split="ppo", exclude=seen)
    paths = out / "train.jsonl", out / "heldout.jsonl"
    for path, items in zip(paths, (train, heldout)):
        write_jsonl(path, items)
    return paths


def trailing_mean(values: list[float], window: int) -> list[float]:
    """Each value averaged with the `window - 1` before it: the trend of a noisy per-step curve."""
    return [statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def plot_curves(run_dir: Path, png: Path, starter_accuracy: float) -> Path:
    """Reward, accuracy (sampled training answers, and greedy held-out answers from the starter
    at step 0 on) and KL per PPO step, from the run's TensorBoard events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    panels = [("solver/reward", "reward"), ("solver/accuracy", "accuracy (train samples)"), ("train/kl", "KL to reference")]
    fig, axes = plt.subplots(1, len(panels), figsize=(12, 3.2))
    for ax, (tag, title) in zip(axes, panels):
        points = events.Scalars(tag) if tag in events.Tags()["scalars"] else []
        steps, values = [p.step for p in points], [p.value for p in points]
        ax.plot(steps, values, lw=0.8, alpha=0.4)
        window = 10  # one step's batch is noisy: a trailing mean shows the trend
        trend = trailing_mean(values, window)
        ax.plot(steps, trend, lw=1.5, color="C0", label=f"mean of {window} steps")
        if tag == "solver/accuracy":
            held = events.Scalars("val/accuracy") if "val/accuracy" in events.Tags()["scalars"] else []
            steps = [0] + [p.step for p in held]
            ax.plot(steps, [starter_accuracy] + [p.value for p in held], "o-", lw=1.5, label="held-out, greedy")
        ax.legend(fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def run(args: argparse.Namespace) -> int:
    from solver_ppo.eval_policy import evaluate_policy
    from solver_ppo.evaluation import format_summary_table
    from solver_ppo.evaluation.summary import format_headroom_table
    from solver_ppo.evaluation.turns import format_turn_table
    from solver_ppo.ppo.train import train

    started = time.time()
    default_config, default_out = FORMATS[args.answer_format]
    out = Path(args.out or default_out)
    config, overrides = args.config, [*args.overrides]
    if config is None or "=" in config:  # no config, or only overrides were given
        config, overrides = str(default_config), [c for c in (config, *overrides) if c is not None]
    cfg = load_config(config, overrides)
    if args.out and not any(o.startswith("trainer.root_dir=") for o in overrides):
        cfg.trainer.root_dir = str(out)  # one comparison's run beside its data and results
    data_dir = out / "data"
    train_path, heldout_path = make_data(data_dir, args.train_problems, args.heldout, cfg.seed, "easy", args.starter_problems)
    cfg.data.train = str(train_path)
    cfg.data.val = cfg.data.val or str(heldout_path)  # held-out accuracy every trainer.val_every steps
    style = {"system_prompt": cfg.data.system_prompt, "instruction": cfg.data.instruction}
    common = {"max_new_tokens": cfg.sampling.max_new_tokens, "evaluation": cfg.evaluation, "batch_size": 50, **style}

    turns = cfg.rollout.turns
    common["turns"], common["end"] = turns, cfg.rollout.end
    print(f"[1/3] evaluating the SFT starter {cfg.model.path} on {args.heldout} held-out problems"
          + (f" ({turns} turns)" if turns > 1 else ""))
    sft, _ = evaluate_policy(cfg.model.path, str(heldout_path), out=str(out / "sft_heldout.jsonl"), **common)

    print(f"[2/3] PPO for {cfg.trainer.max_steps} steps against the solver score")
    module, trainer = train(cfg)
    run_dir = Path(trainer.log_dir)

    print("[3/3] evaluating the PPO policy on the same held-out problems")
    ppo, _ = evaluate_policy(cfg.model.path, str(heldout_path), adapter=str(run_dir / "trainable.pt"),
                             out=str(out / "ppo_heldout.jsonl"), **common)  # fmt: skip

    minutes = (time.time() - started) / 60
    keys = ("accuracy", "solved_rate", "format_rate", "graph_distance", "reward")
    starter = sft["first"] if turns > 1 else sft  # the starter's own accuracy is that of its single answer
    results = {"sft": {k: starter[k] for k in keys}, "ppo": {k: ppo[k] for k in keys}, "minutes": round(minutes, 2),
               "heldout": args.heldout, "ppo_steps": cfg.trainer.max_steps, "run_dir": str(run_dir),
               "turns": turns, "policy_tokens": policy_tokens(run_dir), "labels": cfg.evaluation.labels,
               "vote_label_accuracy": vote_label_accuracy(run_dir)}  # fmt: skip
    for name, summary in (("sft", sft), ("ppo", ppo)):
        by_turn = summary.get("turns", {"acc@1": summary["accuracy"]})
        results[name]["accuracy_by_turn"] = [by_turn[f"acc@{t}"] for t in range(1, turns + 1)]
        results[name]["headroom"] = summary["first_headroom"]  # the wrong first answers their verdict exposes
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    png = plot_curves(run_dir, run_dir / "curves.png", starter["accuracy"])
    print()
    print(f"Held-out problems ({args.heldout}), greedy answers scored by SCIP:")
    if turns == 1:
        print(format_summary_table({"SFT alone": sft, "SFT + PPO": ppo}))
    else:
        print(format_summary_table({"SFT alone, first answer": sft["first"], f"SFT alone, after {turns} turns": sft,
                                    "SFT + PPO, first answer": ppo["first"], f"SFT + PPO, after {turns} turns": ppo}))
        for name, summary in (("SFT alone", sft), ("SFT + PPO", ppo)):
            print(f"\n{name}, accuracy after each turn:")
            print(format_turn_table(summary["turns"]))
    print("\nRevision headroom of the first answers (the wrong ones their own verdict exposes: what feedback can repair):")
    print(format_headroom_table({"SFT alone": sft["first_headroom"], "SFT + PPO": ppo["first_headroom"]}))
    print(f"\naccuracy change: {100 * (ppo['accuracy'] - starter['accuracy']):+.1f} points in {minutes:.1f} minutes")
    print(f"results: {out / 'results.json'}   curves: {png}   TensorBoard: tensorboard --logdir {run_dir.parent}")
    return 0


def vote_label_accuracy(run_dir: Path) -> float | None:
    """evaluation.labels=votes: the mean over the PPO steps of votes/label_accuracy (the share of
    labelled groups whose vote was the true answer); None with reference labels."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    if "votes/label_accuracy" not in events.Tags()["scalars"]:
        return None
    return round(statistics.fmean(p.value for p in events.Scalars("votes/label_accuracy")), 4)


def policy_tokens(run_dir: Path) -> int:
    """Tokens the policy generated over the PPO run (every turn; per rank under DDP), from its TensorBoard
    events (train/policy_tokens, logged every step with trainer.log_every_n_steps=1)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return int(sum(p.value for p in events.Scalars("train/policy_tokens")))
