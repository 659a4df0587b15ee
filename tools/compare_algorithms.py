"""Each estimator on the quick start's problem: held-out accuracy over steps, time per step, KL.

    .venv/bin/python tools/compare_algorithms.py [--out logs/algorithms] [--only grpo,dapo] [--table-only]

The quick start's problem, as `python -m app quickstart` sets it up: its data (PPO prompts and
the 200 held-out problems, from the config's seed), its SFT starter, its config
(configs/quickstart.yaml: 8 prompts x 8 samples per step, 1 epoch of 2 minibatches, lr 2e-5,
fp32, 128 new tokens, 100 steps, greedy held-out accuracy every 20). The starter is evaluated
once; then for every estimator in ESTIMATORS, in turn, `python -m app train
configs/quickstart.yaml` with only the estimator's keys changed, into OUT/NAME (a finished run,
one with a trainable.pt, is not run again). The held-out accuracy after step 100 is the
quick start's final evaluation (the same greedy answers to the same problems). Then a Markdown
table (OUT/table.md, printed) and one plot of held-out accuracy over the steps for all of them
(docs/algorithms-quickstart.png). The keys are those docs/algorithms.md gives for each algorithm.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GROUP = ["ppo.advantage=grpo", "ppo.whiten_advantages=false"]
ESTIMATORS: dict[str, list[str]] = {
    "rloo": [],  # configs/quickstart.yaml as it is: RLOO, whitened, k1 KL in the reward (beta 0.02)
    "gae": ["ppo.advantage=gae", "ppo.value_lr=1e-3"],  # the value head starts from zero: its own lr
    "grpo": [*GROUP, "ppo.loss_aggregation=sequence_mean", "ppo.kl.placement=loss", "ppo.kl.estimator=k3",
             "ppo.kl.coef=0.04"],
    "dr_grpo": [*GROUP, "ppo.scale_rewards=none", "ppo.loss_aggregation=constant_length", "ppo.kl.coef=0"],
    "dapo": [*GROUP, "ppo.loss_aggregation=token_mean", "ppo.clip_high=0.28", "ppo.dynamic_sampling_rounds=3",
             "ppo.overlong_buffer=26", "ppo.mask_truncated=true", "ppo.kl.coef=0"],
    "reinforce_pp": ["ppo.advantage=reinforce_pp"],  # k1 KL in the reward, beta 0.02 as the quick start
    "gspo": [*GROUP, "ppo.ratio=sequence", "ppo.loss_aggregation=sequence_mean", "ppo.clip_low=3e-4",
             "ppo.clip_high=4e-4", "ppo.kl.coef=0"],
}


def prepare(out: Path) -> tuple[Path, Path]:
    """The quick start's data: its PPO prompts and held-out problems (written once: runs may be reading them)."""
    from solver_ppo.config import load_config
    from solver_ppo.quickstart import DEFAULT_CONFIG, STARTER_PROBLEMS, make_data

    paths = out / "data" / "train.jsonl", out / "data" / "heldout.jsonl"
    if all(path.is_file() for path in paths):
        return paths
    return make_data(out / "data", 800, 200, load_config(DEFAULT_CONFIG).seed, "easy", STARTER_PROBLEMS)


def starter_accuracy(out: Path, heldout: Path) -> float:
    """The starter's greedy held-out accuracy, evaluated once (kept in OUT/sft.json)."""
    from solver_ppo.config import load_config
    from solver_ppo.eval_policy import evaluate_policy
    from solver_ppo.quickstart import DEFAULT_CONFIG

    sft_file = out / "sft.json"
    if not sft_file.is_file():
        cfg = load_config(DEFAULT_CONFIG)
        print(f"evaluating the starter {cfg.model.path} on {heldout}", flush=True)
        summary, _ = evaluate_policy(
            cfg.model.path, str(heldout), max_new_tokens=cfg.sampling.max_new_tokens, evaluation=cfg.evaluation,
            batch_size=50, system_prompt=cfg.data.system_prompt, instruction=cfg.data.instruction,
        )
        sft_file.write_text(json.dumps({"accuracy": summary["accuracy"]}) + "\n")
    return json.loads(sft_file.read_text())["accuracy"]


def run_dir(out: Path, name: str, finished: bool = True) -> Path | None:
    """The estimator's run directory: a finished one (with its trainable.pt), or with
    finished=False the one that got furthest (the largest event log)."""
    if finished:
        runs = sorted((out / name / name).glob("version_*/trainable.pt"))
        return runs[-1].parent if runs else None
    logs = sorted((out / name / name).glob("version_*/events.*"), key=lambda path: path.stat().st_size)
    return logs[-1].parent if logs else None


def run(name: str, out: Path, train: Path, heldout: Path) -> None:
    if run_dir(out, name) is not None:
        print(f"{name}: finished in {run_dir(out, name)}, not run again", flush=True)
        return
    command = [sys.executable, "-m", "app", "train", "configs/quickstart.yaml", f"run_name={name}",
               f"data.train={train}", f"data.val={heldout}", f"trainer.root_dir={out / name}",
               "trainer.enable_progress_bar=false", *ESTIMATORS[name]]
    print(f"{name}: {' '.join(command[1:])}", flush=True)
    started = time.time()
    with open(out / f"{name}.log", "w") as log:
        code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    print(f"{name}: exit code {code} after {(time.time() - started) / 60:.1f} minutes (log: {out / f'{name}.log'})",
          flush=True)


def summarize(name: str, out: Path, sft: float) -> dict | None:
    """Numbers of a finished run: held-out accuracy (the starter's, then every val_every steps),
    seconds per PPO step (its timed phases, validation excluded), KL per sequence, train reward."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = run_dir(out, name) or run_dir(out, name, finished=False)  # an unfinished run: its steps so far
    if run is None:
        return None
    events = EventAccumulator(str(run))
    events.Reload()
    scalars = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    phases = ("time/generate", "time/forward", "time/score_wait", "time/update")
    per_step = [sum(values) for values in zip(*(scalars[p] for p in phases))]
    steps = len(scalars["train/kl"])
    val = scalars.get("val/accuracy", [])
    from solver_ppo.config import load_config
    from solver_ppo.quickstart import DEFAULT_CONFIG

    every = load_config(DEFAULT_CONFIG).trainer.val_every
    return {
        "name": name if run_dir(out, name) else f"{name} (unfinished: {steps} steps)",
        "sft": sft,
        "final": val[-1] if val else float("nan"),
        "curve": [(0, sft)] + [((i + 1) * every, v) for i, v in enumerate(val)],
        "seconds_per_step": statistics.fmean(per_step),
        "kl_last10": statistics.fmean(scalars["train/kl"][-10:]),
        "train_reward_last10": statistics.fmean(scalars["solver/reward"][-10:]),
        "sampling_rounds": statistics.fmean(scalars.get("train/sampling_rounds", [1.0])),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| estimator | held-out accuracy: starter → last evaluation | best along the run | s / step | sampling rounds / step | KL / sequence (last 10 steps) | train reward (last 10 steps) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        best = max(v for _, v in r["curve"][1:]) if len(r["curve"]) > 1 else r["final"]
        lines.append(
            f"| {r['name']} | {r['sft']:.3f} → **{r['final']:.3f}** | {best:.3f} | {r['seconds_per_step']:.2f} "
            f"| {r['sampling_rounds']:.2f} | {r['kl_last10']:.3f} | {r['train_reward_last10']:.3f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r, marker in zip(rows, "osD^v<>"):  # markers tell apart lines that coincide (200 problems: steps of 0.005)
        steps, values = zip(*r["curve"])
        ax.plot(steps, values, marker=marker, lw=1.5, ms=5, alpha=0.85, label=f"{r['name']} ({r['final']:.3f})")
    ax.set_xlabel("PPO step")
    ax.set_ylabel("held-out accuracy (greedy, 200 problems)")
    ax.set_title("Quick start: each estimator from the same SFT starter")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="logs/algorithms", help="one quick start directory per estimator goes here")
    parser.add_argument("--only", default=",".join(ESTIMATORS), help="comma-separated estimators, in run order")
    parser.add_argument("--table-only", action="store_true", help="no runs: table and plot of the finished ones")
    parser.add_argument("--png", default=str(ROOT / "docs" / "algorithms-quickstart.png"))
    args = parser.parse_args()
    out = Path(args.out)
    names = args.only.split(",")
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        parser.error(f"unknown estimator(s) {', '.join(unknown)}; choose from {', '.join(ESTIMATORS)}")
    train, heldout = prepare(out)
    if not args.table_only:
        for name in names:
            run(name, out, train, heldout)
    sft = starter_accuracy(out, heldout)
    rows = [row for row in (summarize(n, out, sft) for n in ESTIMATORS) if row is not None]
    text = table(rows)
    (out / "table.md").write_text(text + "\n")
    print(text)
    if rows:
        plot(rows, Path(args.png))
        print(f"plot: {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
