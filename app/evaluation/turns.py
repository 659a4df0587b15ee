"""What revising after feedback changed: accuracy after each turn of multi-turn answers.

Shared by `eval --turns K` and the training/validation metrics. An episode that ended before
turn t (solved, or out of context) keeps its last answer, so acc@t counts every episode.
"""

from __future__ import annotations

from collections.abc import Sequence


def turn_statistics(standing: Sequence[Sequence[bool]], turns_taken: Sequence[int]) -> dict[str, float]:
    """standing[e][t - 1]: whether episode e's answer standing after turn t is right (E, K);
    turns_taken[e]: answers it gave. Returns acc@t (fraction right after turn t), fixed@t and
    broke@t for t >= 2 (how many answers turn t turned from wrong to right, and right to wrong),
    and mean_turns."""
    if not standing:
        raise ValueError("no episodes to summarize")
    n, k = len(standing), len(standing[0])
    out: dict[str, float] = {"n": n, "mean_turns": sum(turns_taken) / n}
    for t in range(k):
        out[f"acc@{t + 1}"] = sum(bool(s[t]) for s in standing) / n
        if t:
            out[f"fixed@{t + 1}"] = sum(bool(s[t]) and not s[t - 1] for s in standing)
            out[f"broke@{t + 1}"] = sum(s[t - 1] and not bool(s[t]) for s in standing)
    return out


def format_turn_table(stats: dict[str, float]) -> str:
    """A markdown table, one row per turn: | turn | accuracy | fixed | broke |, then the mean turns."""
    k = sum(1 for key in stats if key.startswith("acc@"))
    lines = ["| turn | accuracy | fixed | broke |", "|---|---|---|---|"]
    for t in range(1, k + 1):
        fixed, broke = ("—", "—") if t == 1 else (f"{stats[f'fixed@{t}']:.0f}", f"{stats[f'broke@{t}']:.0f}")
        lines.append(f"| {t} | {stats[f'acc@{t}']:.3f} | {fixed} | {broke} |")
    lines.append(f"\nmean turns: {stats['mean_turns']:.2f} over {stats['n']:.0f} problems")
    return "\n".join(lines)
