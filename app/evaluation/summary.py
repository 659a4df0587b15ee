"""The headline numbers of a set of scored answers, shared by `score`, `eval` and the quick start."""

from __future__ import annotations

from collections import Counter
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


# --------------------------------------------------------------------------- revision headroom

SILENT = "silent"  # a wrong answer whose model solves to a nonzero optimum: its feedback could be a right one's
ALL_ZERO_OPTIMUM = "every variable 0"


def exposure(r: ScoreResult) -> str | None:
    """What exposes a wrong answer in its own verdict, or SILENT; None for a right answer.

    Feedback never reads the reference, so a policy can only revise a wrong answer on purpose when
    its verdict shows something amiss: no error-free solve (its status: an exception or syntax error
    at a line, no solve call, no model, infeasible, unbounded, a time limit), or an optimum with
    every variable at 0. A wrong model that solves to a nonzero optimum gets the message a right one
    could get. The exposed share of the wrong answers is the most a feedback run can hope to repair.
    """
    if r.matched:
        return None
    if r.status != "optimal":
        return r.status
    return ALL_ZERO_OPTIMUM if r.n_nonzero == 0 else SILENT


def exposed(r: ScoreResult) -> bool | None:
    """The `exposed` field of a scored row: None on a right answer, else whether its verdict exposes it."""
    kind = exposure(r)
    return None if kind is None else kind != SILENT


def headroom(results: Sequence[ScoreResult]) -> dict:
    """Among the answers that do not match: how many there are, how many their verdicts expose
    (and by what, most first), how many are silent, and the exposed share (None without wrong answers)."""
    kinds = Counter(k for k in map(exposure, results) if k is not None)
    wrong = sum(kinds.values())
    silent = kinds.pop(SILENT, 0)
    return {"n": len(results), "wrong": wrong, "exposed": wrong - silent, "silent": silent,
            "exposed_share": (wrong - silent) / wrong if wrong else None, "exposed_by": dict(kinds.most_common())}


def format_headroom_table(rows: dict[str, dict]) -> str:
    """A markdown table, one row per named `headroom`: | | answers | wrong | exposed | share | silent | exposed by |"""
    lines = ["| | answers | wrong | exposed | share of wrong | silent | exposed by |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, h in rows.items():
        share = "—" if h["exposed_share"] is None else f"{h['exposed_share']:.3f}"
        by = ", ".join(f"{kind} {count}" for kind, count in h["exposed_by"].items()) or "—"
        lines.append(f"| {name} | {h['n']} | {h['wrong']} | {h['exposed']} | {share} | {h['silent']} | {by} |")
    return "\n".join(lines)
