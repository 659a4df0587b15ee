"""The headline numbers of a set of scored answers, shared by `score`, `eval` and the quick start."""

from __future__ import annotations

from collections.abc import Sequence

from solver_ppo.evaluation.reward import ScoreResult

SUMMARY_COLUMNS = [
    ("accuracy", "accuracy"),
    ("solved_rate", "solved rate"),
    ("format_rate", "format rate"),
    ("graph_distance", "mean graph distance"),
    ("reward", "mean reward"),
]


def result_values(r: ScoreResult) -> dict[str, float | None]:
    """One answer's contribution to each summary number (graph distance None without a reference model)."""
    return {
        "accuracy": float(r.matched),
        "solved_rate": float(r.breakdown.get("solved", 0.0) > 0),
        "format_rate": float(r.breakdown.get("format", 0.0) > 0),
        "graph_distance": r.graph_distance,
        "reward": r.reward,
    }


def summarize(results: Sequence[ScoreResult]) -> dict[str, float | None]:
    """Rates as fractions in [0, 1]; graph distance over the answers that have one (None if none)."""
    n = len(results)
    if n == 0:
        raise ValueError("nothing to summarize: no scored answers")
    values = [result_values(r) for r in results]
    out: dict[str, float | None] = {"n": n}
    for key, _ in SUMMARY_COLUMNS:
        present = [v[key] for v in values if v[key] is not None]
        out[key] = sum(present) / len(present) if present else None
    return out


def format_summary_table(rows: dict[str, dict[str, float | None]]) -> str:
    """A markdown table, one row per named summary: | | accuracy | solved rate | ... |"""
    header = "| | " + " | ".join(title for _, title in SUMMARY_COLUMNS) + " |"
    lines = [header, "|---" * (len(SUMMARY_COLUMNS) + 1) + "|"]
    for name, summary in rows.items():
        cells = ["—" if summary[key] is None else f"{summary[key]:.3f}" for key, _ in SUMMARY_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
