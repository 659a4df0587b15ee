"""Writes a table of sample questions, answers and scores to the run's loggers every N iterations
(TensorBoard as Markdown text, W&B as a table, MLflow as a JSON artifact)."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer

from solver_ppo.loggers import log_table

COLUMNS = ["id", "question", "answer", "score", "status", "reason"]


def _cell(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " …"


def sample_rows(rollout, n: int, limit: int = 600) -> list[list]:
    """The first `n` samples of a rollout: id, question, answer, score, status, reason (long texts cut)."""
    return [
        [problem.id, _cell(problem.question, limit), _cell(response, limit), round(score, 3),
         breakdown.get("status", ""), _cell(str(breakdown.get("reason", "")), 200)]
        for problem, response, score, breakdown in list(
            zip(rollout.problems, rollout.responses, rollout.scores.tolist(), rollout.breakdowns))[:n]
    ]


def samples_markdown(rows: list[list]) -> str:
    def cell(value) -> str:
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


class SampleLogger(Callback):
    def __init__(self, every_n_iterations: int, n_samples: int = 4):
        self.every = every_n_iterations
        self.n_samples = n_samples

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        rollout = getattr(pl_module, "last_rollout", None)
        iteration = pl_module.iteration - 1  # the iteration that produced last_rollout
        if rollout is None or self.every <= 0 or iteration % self.every != 0 or not trainer.is_global_zero:
            return
        rows = sample_rows(rollout, self.n_samples)
        log_table(trainer.loggers, "samples", COLUMNS, rows, samples_markdown(rows), iteration)
