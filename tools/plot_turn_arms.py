"""Training curves of single-turn and feedback PPO runs side by side, against the policy-token budget.

    .venv/bin/python tools/plot_turn_arms.py --run "single-turn=logs/cmp-py/k1/quickstart_pyscipopt/version_0" \
        --run "K = 2=logs/cmp-py/k2/quickstart_pyscipopt/version_0" --out docs/quickstart-pyscipopt-feedback-curves.png

Arms are compared at the same number of policy-generated tokens (train/policy_tokens, every turn), not
steps: a feedback step samples more. Left, the training samples' accuracy: the answer standing at the
end of each episode (turns/acc@K; solver/accuracy for a single-turn run) and, dashed, the first answer
(turns/acc@1): the gap between them is what revising adds. Right, the KL to the reference.
"""

from __future__ import annotations

import argparse
from itertools import accumulate
from pathlib import Path

from solver_ppo.quickstart import trailing_mean


def scalars(run_dir: str) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run_dir)
    events.Reload()
    return {tag: [p.value for p in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def trend(values: list[float]) -> list[float]:
    """One step's batch is noisy: the mean of 5 steps."""
    return trailing_mean(values, 5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=RUN_DIR",
                        help="a PPO run directory (holding its TensorBoard events) and its label; repeat per arm")
    parser.add_argument("--out", required=True, help="the PNG to write")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, kl_ax) = plt.subplots(1, 2, figsize=(11, 3.4))
    for i, run in enumerate(args.run):
        label, _, run_dir = run.rpartition("=")  # the label may hold "=" ("K = 2")
        if not run_dir or not Path(run_dir).is_dir():
            parser.error(f"--run {run!r}: give LABEL=RUN_DIR with an existing run directory")
        logged = scalars(run_dir)
        if "train/policy_tokens" not in logged:
            parser.error(f"--run {run!r}: no train/policy_tokens in its events (is it a PPO run directory?)")
        tokens = [t / 1e6 for t in accumulate(logged["train/policy_tokens"])]
        turns = sorted((k for k in logged if k.startswith("turns/acc@")), key=lambda k: int(k.rsplit("@", 1)[1]))
        standing = logged[turns[-1]] if turns else logged["solver/accuracy"]
        acc_ax.plot(tokens, trend(standing), color=f"C{i}", lw=1.5, label=f"{label}, standing answer")
        if turns:
            acc_ax.plot(tokens, trend(logged[turns[0]]), color=f"C{i}", lw=1.0, ls="--", label=f"{label}, first answer")
        kl_ax.plot(tokens, trend(logged["train/kl"]), color=f"C{i}", lw=1.5, label=label)
    acc_ax.set_title("training samples' accuracy (mean of 5 steps)")
    kl_ax.set_title("KL to the reference")
    for ax in (acc_ax, kl_ax):
        ax.set_xlabel("policy tokens (millions)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
