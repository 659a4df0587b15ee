"""The seam between the PPO loop and whatever scores its responses.

The module never imports SCIP: it hands the decoded responses to the trainer's `RolloutScorer`
callback (`callbacks/solver_reward.py` is the real one), goes on with the reference and value
passes while the scorer works, and then collects the scores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from typing import Any

from lightning.pytorch import Callback, LightningModule

from solver_ppo.ppo.episode import Verdict


@dataclass
class RolloutScores:
    scores: list[float]  # one per response, in [0, 1]
    breakdowns: list[dict] = field(default_factory=list)  # per response: reward terms, status, reason
    matched: list[bool] = field(default_factory=list)  # per response: the objective matches (empty: unknown, no)
    feedback: list[str] = field(default_factory=list)  # per response: what the policy reads next turn (empty: none)
    results: list[Any] = field(default_factory=list)  # per response: the evaluation's ScoreResult, where there is one

    def verdicts(self) -> list[Verdict]:
        n = len(self.scores)
        matched, feedback = self.matched or [False] * n, self.feedback or [""] * n
        breakdowns, results = self.breakdowns or [{}] * n, self.results or [None] * n
        return [Verdict(score=s, matched=m, status=b.get("status", ""), feedback=f, breakdown=b, result=r)
                for s, m, f, b, r in zip(self.scores, matched, feedback, breakdowns, results)]


class RolloutScorer(Callback, ABC):
    """A callback that scores a rollout's responses; `begin` may start asynchronous work."""

    @abstractmethod
    def begin(self, responses: list[str], problems: list) -> None:
        """Start scoring `responses[i]` against `problems[i]` (may return before it is done)."""

    @abstractmethod
    def finish(self, module: LightningModule) -> RolloutScores:
        """Wait for the scores of the last `begin` and return them."""

    def settle(self, module: LightningModule, verdicts: list[Verdict], group_size: int, problems: list) -> list[Verdict]:
        """The final verdicts of a rollout's episodes as the reward counts them (each episode's
        standing answer; called once per rollout, where a scorer logs its metrics); they come in groups
        of `group_size` in a row, one group per problem (`problems[i]`: verdict i's). A scorer that
        labels a group from its own answers (evaluation.labels=votes) rewards them here; by default
        they stand as scored."""
        return verdicts

    @abstractmethod
    def validate(self, responses: list[str], problems: list) -> RolloutScores:
        """Score greedy answers to held-out problems (blocking; nothing is recorded yet)."""

    @abstractmethod
    def record_validation(self, results: list, standing: list[list[bool]], turns_taken: list[int]) -> None:
        """Record the final answers of a validation batch (their `RolloutScores.results`) and the
        accuracy after each turn (`solver_ppo.evaluation.turns`); the callback logs their metrics at the end
        of the validation pass (one reduction across ranks, so ranks may see different numbers of batches)."""
