"""Scores each rollout with the evaluation system's SCIP worker pool and logs the solver metrics.

`begin` submits the responses to the pool and returns at once, so the module's reference and
value passes run while SCIP solves; `finish` waits and attaches the scores. `settle`, once per
rollout, logs accuracy, solved rate, format rate, graph distance and reward mean/std of the
episodes' standing answers (a multi-turn episode's last model: a done reply leaves the previous
one standing), reduced across ranks by torchmetrics. Each score carries the evaluation's
feedback on the answer, which a multi-turn episode (`rollout.turns`) shows the policy next. A
pool failure never stops training: every response then scores 0 with the reason.

With `evaluation.labels=votes` answers are scored with no reference, and `settle` rewards each
episode's last answer against the label its prompt's group voted (app/evaluation/votes.py). The
problems' answers, where the data have them, are read only to watch the votes: solver/accuracy
(against the true answer), votes/label_accuracy, votes/labelled and votes/reward_agreement.
Validation always scores against the true answers.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule, Trainer
from torchmetrics import MeanMetric

from solver_ppo.evaluation import EvaluationConfig, EvaluatorPool, Reference, ScoreResult
from solver_ppo.evaluation.feedback import feedback_message
from solver_ppo.evaluation.summary import result_values
from solver_ppo.evaluation.turns import turn_statistics
from solver_ppo.evaluation.votes import label_groups, reward_against, same_answer
from solver_ppo.ppo.episode import Verdict
from solver_ppo.ppo.scoring import RolloutScorer, RolloutScores

METRICS = ("accuracy", "solved_rate", "format_rate", "graph_distance", "reward", "reward_sq")
# evaluation.labels=votes: share of groups labelled; of labelled groups with a known answer, share
# whose label is it; of answers to problems with a known answer, share whose answer credit is the same against both
VOTE_METRICS = ("labelled", "label_accuracy", "reward_agreement")


def _summary_values(result: ScoreResult) -> dict[str, float | None]:
    return {**result_values(result), "reward_sq": result.reward**2}


class SolverReward(RolloutScorer):
    def __init__(self, config: EvaluationConfig):
        self.config = config
        self.pool: EvaluatorPool | None = None
        self._pending = None
        self._n_items = 0
        self.votes = config.labels == "votes"
        self.metrics = {name: MeanMetric() for name in METRICS}
        self.vote_metrics = {name: MeanMetric() for name in VOTE_METRICS} if self.votes else {}
        self.val_metrics = {name: MeanMetric() for name in METRICS}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.pool is None:
            self.pool = EvaluatorPool(self.config)
        turns = pl_module.cfg.rollout.turns
        if turns > 1:  # acc@t, fixed@t, broke@t as fractions of the held-out problems, and mean_turns
            names = ["mean_turns", *(f"acc@{t}" for t in range(1, turns + 1)),
                     *(f"{kind}@{t}" for t in range(2, turns + 1) for kind in ("fixed", "broke"))]
            self.val_metrics.update({name: MeanMetric() for name in names if name not in self.val_metrics})
        for metrics in (self.metrics, self.val_metrics, self.vote_metrics):
            for name, metric in metrics.items():
                metrics[name] = metric.to(pl_module.device)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def begin(self, responses: list[str], problems: list) -> None:
        refs = [Reference() for _ in problems] if self.votes else [_reference(p) for p in problems]
        items = list(zip(responses, refs))
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
            return RolloutScores(scores=[0.0] * self._n_items, breakdowns=[{"reason": reason}] * self._n_items,
                                 feedback=[reason] * self._n_items)
        return _scores(results)  # `settle` logs, once per rollout

    def settle(self, module: LightningModule, verdicts: list[Verdict], group_size: int, problems: list) -> list[Verdict]:
        """The episodes' standing verdicts, logged as solver/*; with evaluation.labels=votes each
        rewarded against its group's label first (and votes/* logged)."""
        scored = [i for i, v in enumerate(verdicts) if v.result is not None]  # none where the pool failed
        if self.votes:
            settled = self._reward_against_votes(verdicts, scored, group_size, problems)
        else:
            settled = verdicts
            _update(self.metrics, [verdicts[i].result for i in scored])
        logged = {f"solver/{k}": v for k, v in _reduce(self.metrics).items()}
        if len(scored) < len(verdicts):
            logged["solver/worker_failures"] = float(len(verdicts) - len(scored))
        if self.votes:
            logged.update({f"votes/{k}": v for k, v in _reduce(self.vote_metrics).items()})
        module.log_dict(logged, rank_zero_only=True)
        module.last_solver_metrics = {k.split("/", 1)[1]: v for k, v in logged.items()}
        return settled

    def _reward_against_votes(self, verdicts: list[Verdict], scored: list[int], group_size: int, problems: list) -> list[Verdict]:
        """Each scored answer rewarded against its group's voted label; the solver and vote metrics updated."""
        rescored, votes = label_groups([verdicts[i].result for i in scored], [i // group_size for i in scored], self.config)
        settled = list(verdicts)
        for i, r in zip(scored, rescored):
            label = votes[i // group_size].label
            breakdown = {**r.breakdown, "status": r.status, "reason": r.reason,
                         "label": None if label is None else label.expected}
            settled[i] = Verdict(r.reward, r.matched, r.status, verdicts[i].feedback, breakdown, r)
        truths = [_truth(p) for p in problems]
        watched = [None if truth is None else reward_against(r, truth, self.config).matched
                   for r, truth in zip(rescored, (truths[i] for i in scored))]
        _update(self.metrics, rescored, watched)
        for r, right in zip(rescored, watched):
            self.vote_metrics["reward_agreement"].update(*_weighted(None if right is None else float(right == r.matched)))
        for group, vote in votes.items():
            truth = truths[group * group_size]
            self.vote_metrics["labelled"].update(*_weighted(float(vote.label is not None)))
            right = None if vote.label is None or truth is None else float(same_answer(vote.label, truth, self.config.match))
            self.vote_metrics["label_accuracy"].update(*_weighted(right))
        return settled

    def validate(self, responses: list[str], problems: list) -> RolloutScores:
        items = [(text, _reference(p)) for text, p in zip(responses, problems)]
        try:
            results = self.pool.score_many(items)
        except Exception as err:  # counted as wrong answers, like a failed training rollout
            reason = f"reward worker failure: {type(err).__name__}: {err}"
            results = [ScoreResult(0.0, {}, "worker_failure", reason=reason) for _ in items]
        return _scores(results)

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


def _scores(results: list[ScoreResult]) -> RolloutScores:
    return RolloutScores(
        scores=[r.reward for r in results],
        breakdowns=[{**r.breakdown, "status": r.status, "reason": r.reason} for r in results],
        matched=[r.matched for r in results],
        feedback=[feedback_message(r) for r in results],
        results=results,
    )


def _reference(problem) -> Reference:
    return Reference.from_answer(problem.answer, problem.reference_model)


def _truth(problem) -> Reference | None:
    """The problem's answer, to watch the votes with; None where the data have none (a reference
    model alone is not solved here: it is not watched)."""
    try:
        return None if problem.answer is None else Reference.from_answer(problem.answer)
    except ValueError:
        return None


def _weighted(value: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A metric update; a missing value counts with weight 0, so every rank updates and syncs the same metrics."""
    return torch.tensor(value or 0.0), torch.tensor(0.0 if value is None else 1.0)


def _update(metrics: dict[str, MeanMetric], results: list[ScoreResult], matched_truth: list[bool | None] | None = None) -> None:
    """`matched_truth` (votes): whether each answer matches the true answer (None: unknown), the accuracy counted."""
    for k, result in enumerate(results):
        values = _summary_values(result)
        if matched_truth is not None:
            values["accuracy"] = None if matched_truth[k] is None else float(matched_truth[k])
        for name, value in values.items():
            metrics[name].update(*_weighted(value))


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
