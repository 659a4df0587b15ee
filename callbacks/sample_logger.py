"""Writes a text table of sample questions, answers and scores to TensorBoard every N iterations."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger


def _cell(text: str, limit: int) -> str:
    text = text if len(text) <= limit else text[:limit] + " …"
    return text.replace("|", "\\|").replace("\n", "<br>")


def samples_markdown(rollout, n: int, limit: int = 600) -> str:
    rows = ["| id | question | answer | score | status | reason |", "|---|---|---|---|---|---|"]
    for problem, response, score, breakdown in list(
        zip(rollout.problems, rollout.responses, rollout.scores.tolist(), rollout.breakdowns)
    )[:n]:
        rows.append(
            f"| {problem.id} | {_cell(problem.question, limit)} | {_cell(response, limit)} | {score:.3f} "
            f"| {breakdown.get('status', '')} | {_cell(str(breakdown.get('reason', '')), 200)} |"
        )
    return "\n".join(rows)


class SampleLogger(Callback):
    def __init__(self, every_n_iterations: int, n_samples: int = 4):
        self.every = every_n_iterations
        self.n_samples = n_samples

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        rollout = getattr(pl_module, "last_rollout", None)
        iteration = pl_module.iteration - 1  # the iteration that produced last_rollout
        if rollout is None or self.every <= 0 or iteration % self.every != 0 or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("samples", samples_markdown(rollout, self.n_samples), iteration)
