"""Scores each rollout with the evaluation system's SCIP worker pool and logs the solver metrics.

`begin` submits the responses to the pool and returns at once, so the module's reference and
value passes run while SCIP solves; `finish` waits, attaches the scores and logs accuracy,
solved rate, format rate, graph distance and reward mean/std, reduced across ranks by
torchmetrics. Each score carries the evaluation's feedback on the answer, which a multi-turn
episode (`rollout.turns`) shows the policy next. A pool failure never stops training: every
response then scores 0 with the reason.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule, Trainer
from torchmetrics import MeanMetric

from solver_ppo.evaluation import EvaluationConfig, EvaluatorPool, Reference, ScoreResult
from solver_ppo.evaluation.feedback import feedback_message
from solver_ppo.evaluation.summary import result_values
from solver_ppo.evaluation.turns import turn_statistics
from solver_ppo.ppo.scoring import RolloutScorer, RolloutScores

METRICS = ("accuracy", "solved_rate", "format_rate", "graph_distance", "reward", "reward_sq")


def _summary_values(result: ScoreResult) -> dict[str, float | None]:
    return {**result_values(result), "reward_sq": result.reward**2}


class SolverReward(RolloutScorer):
    def __init__(self, config: EvaluationConfig):
        self.config = config
        self.pool: EvaluatorPool | None = None
        self._pending = None
        self._n_items = 0
        self.metrics = {name: MeanMetric() for name in METRICS}
        self.val_metrics = {name: MeanMetric() for name in METRICS}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.pool is None:
            self.pool = EvaluatorPool(self.config)
        turns = pl_module.cfg.rollout.turns
        if turns > 1:  # acc@t, fixed@t, broke@t as fractions of the held-out problems, and mean_turns
            names = ["mean_turns", *(f"acc@{t}" for t in range(1, turns + 1)),
                     *(f"{kind}@{t}" for t in range(2, turns + 1) for kind in ("fixed", "broke"))]
            self.val_metrics.update({name: MeanMetric() for name in names if name not in self.val_metrics})
        for metrics in (self.metrics, self.val_metrics):
            for name, metric in metrics.items():
                metrics[name] = metric.to(pl_module.device)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def begin(self, responses: list[str], problems: list) -> None:
        items = [(text, Reference.from_answer(p.answer, p.reference_model)) for text, p in zip(responses, problems)]
        self._n_items = len(items)
        try:
            self._pending = self.pool.submit(items)
        except Exception as err:  # the pool itself broke: score zero, keep training
            self._pending = err

    def finish(self, module: LightningModule) -> RolloutScores:
        pending, self._pending = self._pending, None
        try:
            if isinstance(pending, Exception):
                raise pending
            results = pending.result()
        except Exception as err:
            reason = f"reward worker failure: {type(err).__name__}: {err}"
            module.print(reason)
            return RolloutScores(
                scores=[0.0] * self._n_items,
                breakdowns=[{"reason": reason}] * self._n_items,
                metrics={"solver/worker_failures": float(self._n_items)},
                feedback=[reason] * self._n_items,
            )
        _update(self.metrics, results)
        reduced = _reduce(self.metrics)
        module.log_dict({f"solver/{k}": v for k, v in reduced.items()}, rank_zero_only=True)
        return _scores(results, reduced)

    def validate(self, responses: list[str], problems: list) -> RolloutScores:
        items = [(text, Reference.from_answer(p.answer, p.reference_model)) for text, p in zip(responses, problems)]
        try:
            results = self.pool.score_many(items)
        except Exception as err:  # counted as wrong answers, like a failed training rollout
            reason = f"reward worker failure: {type(err).__name__}: {err}"
            results = [ScoreResult(0.0, {}, "worker_failure", reason=reason) for _ in items]
        return _scores(results, {})

    def record_validation(self, results: list, standing: list[list[bool]], turns_taken: list[int]) -> None:
        _update(self.val_metrics, results)
        if len(standing[0]) > 1:
            for row, taken in zip(standing, turns_taken):
                stats = turn_statistics([row], [taken])
                for name, value in stats.items():
                    if name != "n":
                        self.val_metrics[name].update(torch.tensor(float(value)))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        reduced = _reduce(self.val_metrics)
        pl_module.log_dict({f"val/{k}": v for k, v in reduced.items()}, rank_zero_only=True)


def _scores(results: list[ScoreResult], metrics: dict[str, float]) -> RolloutScores:
    return RolloutScores(
        scores=[r.reward for r in results],
        breakdowns=[{**r.breakdown, "status": r.status, "reason": r.reason} for r in results],
        metrics=metrics,
        matched=[r.matched for r in results],
        feedback=[feedback_message(r) for r in results],
        results=results,
    )


def _update(metrics: dict[str, MeanMetric], results: list[ScoreResult]) -> None:
    for result in results:
        for name, value in _summary_values(result).items():
            # A missing value (no reference model: no graph distance) counts with weight 0, so
            # every rank updates and syncs the same metrics.
            weight = 0.0 if value is None else 1.0
            metrics[name].update(torch.tensor(value or 0.0), torch.tensor(weight))


def _reduce(metrics: dict[str, MeanMetric]) -> dict[str, float]:
    """Means across ranks (compute() is the collective), then reset; reward_sq becomes reward_std."""
    reduced = {}
    for name, metric in metrics.items():
        value = float(metric.compute())
        metric.reset()
        if value == value:  # nan when no rank had a value
            reduced[name] = value
    if "reward" in reduced:
        mean = reduced["reward"]
        reduced["reward_std"] = max(0.0, reduced.pop("reward_sq") - mean * mean) ** 0.5
    return reduced
