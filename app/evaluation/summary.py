"""The headline numbers of a set of scored answers, shared by `score`, `eval` and the quick start."""

from __future__ import annotations

from collections.abc import Sequence

from app.evaluation.reward import ScoreResult

SUMMARY_COLUMNS = [
    ("accuracy", "accuracy"),
    ("solved_rate", "solved rate"),
    ("format_rate", "format rate"),
    ("graph_distance", "mean graph distance"),
    ("reward", "mean reward"),
]


def summarize(results: Sequence[ScoreResult]) -> dict[str, float | None]:
    """Rates as fractions in [0, 1]; graph distance over the answers that have one (None if none)."""
    n = len(results)
    if n == 0:
        raise ValueError("nothing to summarize: no scored answers")
    graphs = [r.graph_distance for r in results if r.graph_distance is not None]
    return {
        "n": n,
        "accuracy": sum(r.matched for r in results) / n,
        "solved_rate": sum(r.breakdown.get("solved", 0.0) > 0 for r in results) / n,
        "format_rate": sum(r.breakdown.get("format", 0.0) > 0 for r in results) / n,
        "graph_distance": sum(graphs) / len(graphs) if graphs else None,
        "reward": sum(r.reward for r in results) / n,
    }


def format_summary_table(rows: dict[str, dict[str, float | None]]) -> str:
    """A markdown table, one row per named summary: | | accuracy | solved rate | ... |"""
    header = "| | " + " | ".join(title for _, title in SUMMARY_COLUMNS) + " |"
    lines = [header, "|---" * (len(SUMMARY_COLUMNS) + 1) + "|"]
    for name, summary in rows.items():
        cells = ["—" if summary[key] is None else f"{summary[key]:.3f}" for key, _ in SUMMARY_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
