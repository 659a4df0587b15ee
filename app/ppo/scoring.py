"""The seam between the PPO loop and whatever scores its responses.

The module never imports SCIP: it hands the decoded responses to the trainer's `RolloutScorer`
callback (`callbacks/solver_reward.py` is the real one), goes on with the reference and value
passes while the scorer works, and then collects the scores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from lightning.pytorch import Callback, LightningModule


@dataclass
class RolloutScores:
    scores: list[float]  # one per response, in [0, 1]
    breakdowns: list[dict] = field(default_factory=list)  # per response: reward terms, status, reason
    metrics: dict[str, float] = field(default_factory=dict)  # already reduced across ranks


class RolloutScorer(Callback, ABC):
    """A callback that scores a rollout's responses; `begin` may start asynchronous work."""

    @abstractmethod
    def begin(self, responses: list[str], problems: list) -> None:
        """Start scoring `responses[i]` against `problems[i]` (may return before it is done)."""

    @abstractmethod
    def finish(self, module: LightningModule) -> RolloutScores:
        """Wait for the scores of the last `begin`, log the solver metrics on `module`, return them."""

    @abstractmethod
    def validate(self, responses: list[str], problems: list) -> None:
        """Score greedy answers to held-out problems; the callback logs their metrics at the end of
        the validation pass (one reduction across ranks, so ranks may see different numbers of batches)."""
