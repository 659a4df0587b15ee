"""Settings of the evaluation system: solver limits, the answer-matching rule, reward weights.

Plain dataclasses (no torch, no Lightning) so that the evaluator can be configured from the
training config, from the command line, or from Python on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SolverLimits:
    time_limit_s: float = 5.0  # SCIP's own time limit per solve
    wall_limit_s: float = 15.0  # the worker is killed and replaced past this deadline
    memory_limit_mb: int = 2048  # SCIP's memory limit per solve
    max_answer_chars: int = 200_000  # longer answers are rejected before parsing
    max_vars: int = 10_000
    max_cons: int = 10_000
    max_nonzeros: int = 200_000


@dataclass
class MatchRule:
    """How a predicted optimum is compared with the reference.

    `abs_rel`: |pred - ref| / (|ref| + 1) <= tolerance (the field's default, 1e-6).
    `relative`: |pred - ref| <= tolerance * max(|ref|, 1e-9) (for rounded dataset answers, e.g. 0.05).
    """

    kind: str = "abs_rel"
    tolerance: float = 1e-6


@dataclass
class RewardWeights:
    """Weights of the reward terms; they are renormalized to sum to 1 over the terms present."""

    format: float = 0.1
    solved: float = 0.2
    answer: float = 0.5
    graph: float = 0.2


@dataclass
class EvaluationConfig:
    limits: SolverLimits = field(default_factory=SolverLimits)
    match: MatchRule = field(default_factory=MatchRule)
    weights: RewardWeights = field(default_factory=RewardWeights)
    workers: int = 2  # solver worker processes
