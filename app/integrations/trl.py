"""TRL: the solver reward for `GRPOTrainer(reward_funcs=[solver_reward])` (TRL 1.16).

The dataset carries the problem's answer in an `answer` column (a number, "infeasible", or a JSON
object with `answer` and `reference_model`) and optionally a `reference_model` column; TRL passes
every column to reward functions as keyword arguments, one value per completion. Completions are
text or conversational (the last assistant message is the answer). A row without an answer or a
reference model gets None: TRL leaves this reward out for it. A dataset with neither column is
trained label-free: the completions of one prompt (TRL hands `num_generations` of them, with equal
prompts) vote the prompt's label and each is rewarded against it (app/evaluation/votes.py). The reward is exactly the `reward`
that `solver-ppo score` writes for the same answer; the breakdown goes to TRL's logs through
`log_metric` (means per batch) and `log_extra` (status and reason per completion).

`SolverEnvironment` is for `GRPOTrainer(environment_factory=SolverEnvironment)`: its tool
`check_model` gives the model the solver's feedback on a draft (as the tool's result) before its
final answer, which `solver_reward` scores.
"""

from __future__ import annotations

import json
import re

from solver_ppo.evaluation.feedback import feedback_message
from solver_ppo.evaluation.reward import Reference
from solver_ppo.integrations import scorer

_PYTHON = re.compile(r"^\s*(?:import|from)\s+\w", re.M)


def _text(completion) -> str:
    if isinstance(completion, str):
        return completion
    # conversational: [{"role": "assistant", "content": ...}, ...]; the last assistant turn answers
    for message in reversed(completion):
        if message.get("role") == "assistant":
            content = message.get("content")
            if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
                return "".join(part.get("text", "") for part in content if isinstance(part, dict))
            return content or ""
    return ""


def _references(n: int, answer, reference_model) -> list[Reference | None]:
    answers = answer if answer is not None else [None] * n
    models = reference_model if reference_model is not None else [None] * n
    if len(answers) != n or len(models) != n:
        raise ValueError(f"solver_reward: {n} completions but {len(answers)} answers and {len(models)} reference models")
    return [None if (a is None or a == "") and not m else scorer.reference_from_label(a, m or None) for a, m in zip(answers, models)]


def _finish(rows: list[dict], keep: list[int], n: int, log_metric, log_extra) -> list[float | None]:
    rewards: list[float | None] = [None] * n
    for k, row in zip(keep, rows):
        rewards[k] = row["reward"]
    if rows and log_metric is not None:
        for term in rows[0]["breakdown"]:
            values = [row["breakdown"][term] for row in rows if term in row["breakdown"]]
            log_metric(f"solver/{term}", sum(values) / len(values))
        log_metric("solver/accuracy", sum(row["matched"] for row in rows) / len(rows))
    if log_extra is not None:
        by_k = dict(zip(keep, rows))
        log_extra("solver_status", [by_k[k]["status"] if k in by_k else None for k in range(n)])
        log_extra("solver_reason", [by_k[k]["reason"] if k in by_k else None for k in range(n)])
    return rewards


def _prompt_groups(prompts, n: int) -> list[str]:
    """A group key per completion: its prompt (text, or the conversation as JSON)."""
    if prompts is None or len(prompts) != n:
        raise ValueError(f"solver_reward: label-free scoring groups completions by prompt, but got "
                         f"{'no prompts' if prompts is None else f'{len(prompts)} prompts'} for {n} completions")
    return [p if isinstance(p, str) else json.dumps(p, sort_keys=True) for p in prompts]


def _by_votes(answer, reference_model) -> bool:
    return scorer.settings().labels == "votes" or (answer is None and reference_model is None)


def _votes_log(rows: list[dict], log_metric) -> None:
    """The share of completions whose prompt's votes made a label."""
    if rows and log_metric is not None:
        log_metric("solver/labelled", sum(row["label"] is not None for row in rows) / len(rows))


def solver_reward(prompts, completions, answer=None, reference_model=None, log_metric=None, log_extra=None, **kwargs) -> list[float | None]:
    """One reward per completion (None where the row has no reference); without an answer column,
    or with evaluation.labels=votes, against the label the completions of its prompt vote."""
    if _by_votes(answer, reference_model):
        rows = scorer.vote_rows([_text(c) for c in completions], _prompt_groups(prompts, len(completions)))
        _votes_log(rows, log_metric)
        return _finish(rows, list(range(len(completions))), len(completions), log_metric, log_extra)
    refs = _references(len(completions), answer, reference_model)
    keep = [k for k, ref in enumerate(refs) if ref is not None]
    rows = scorer.score_rows([_text(completions[k]) for k in keep], [refs[k] for k in keep]) if keep else []
    return _finish(rows, keep, len(completions), log_metric, log_extra)


async def solver_reward_async(prompts, completions, answer=None, reference_model=None, log_metric=None, log_extra=None, **kwargs) -> list[float | None]:
    """`solver_reward` for TRL's async path: scoring runs in the pool while TRL awaits other rewards."""
    if _by_votes(answer, reference_model):
        rows = await scorer.vote_rows_async([_text(c) for c in completions], _prompt_groups(prompts, len(completions)))
        _votes_log(rows, log_metric)
        return _finish(rows, list(range(len(completions))), len(completions), log_metric, log_extra)
    refs = _references(len(completions), answer, reference_model)
    keep = [k for k, ref in enumerate(refs) if ref is not None]
    rows = await scorer.score_rows_async([_text(completions[k]) for k in keep], [refs[k] for k in keep]) if keep else []
    return _finish(rows, keep, len(completions), log_metric, log_extra)


class SolverEnvironment:
    """One rollout's solver: TRL calls `reset` with the dataset row, then exposes `check_model` as a tool."""

    def __init__(self):
        scorer.require_feedback()
        self.reference = Reference()
        self.checks = 0

    def reset(self, answer=None, reference_model=None, **kwargs) -> None:
        has_reference = not ((answer is None or answer == "") and not reference_model)
        self.reference = scorer.reference_from_label(answer, reference_model or None) if has_reference else Reference()
        self.checks = 0

    def check_model(self, model: str) -> str:
        """Solve an optimization model with the solver and report what it finds.

        Args:
            model: The model, as LP-format text or as Python code that builds it with a solver library (pyscipopt, gurobipy, coptpy, pulp, pyomo or scipy).

        Returns:
            The solver's status, the objective value and nonzero variables of a solution, or constraints that cannot all hold.
        """
        self.checks += 1
        if "```" not in model:  # a tool argument is the bare model: fence it as the answer extractor expects
            model = f"```{'python' if _PYTHON.search(model) else 'lp'}\n{model}\n```"
        [result] = scorer.score_results([model], [self.reference])
        return feedback_message(result)
