"""The run's loggers (`trainer.loggers`): TensorBoard by default, and Lightning's own CSV, Weights &
Biases and MLflow loggers beside it, all fed the same metrics by `self.log`.

The run directory (checkpoints, samples, results) is `trainer.root_dir/run_name/version_N`, named
by TensorBoard's or the CSV logger's versioning, so a list needs one of them; W&B writes its files
under that directory and MLflow's runs go to `$MLFLOW_TRACKING_URI` (a tracking server, or a
database), else to MLflow's file store in `trainer.root_dir/mlruns`. Each service is set up the way its users already do it, by its own
environment variables (`WANDB_PROJECT`, `WANDB_MODE=offline`, `MLFLOW_TRACKING_URI`,
`MLFLOW_EXPERIMENT_NAME`). wandb and mlflow come with `pip install 'solver-ppo[loggers]'`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from solver_ppo.errors import UserError

LOGGERS = ("tensorboard", "csv", "wandb", "mlflow")
VERSIONED = ("tensorboard", "csv")  # the loggers that name the run directory
PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}
DEFAULT_PROJECT = "solver-ppo"


def check_logger_names(names: list[str]) -> None:
    """Names that exist, once each, with a versioned one among them, and their packages installed."""
    shown = f"trainer.loggers={list(names)}"
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise UserError(f"{shown}: unknown logger {unknown[0]!r}; choose from {', '.join(LOGGERS)}")
    if len(set(names)) != len(names):
        raise UserError(f"{shown} names a logger twice")
    if not any(n in VERSIONED for n in names):
        raise UserError(f"{shown}: add tensorboard or csv too; one of them names the run directory "
                        "(root_dir/run_name/version_N) where checkpoints and samples go")
    for name in names:
        package = PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise UserError(f"{shown}: the {name} logger needs the {package} package: pip install 'solver-ppo[loggers]'")


def build_loggers(names: list[str], root_dir: str, run_name: str) -> list[Logger]:
    """Lightning loggers, a versioned one first (the Trainer's log_dir is the first logger's); the
    others share its version: a second versioned one writes into the same directory."""
    check_logger_names(names)
    ordered = sorted(names, key=lambda n: n not in VERSIONED)
    first = (TensorBoardLogger if ordered[0] == "tensorboard" else CSVLogger)(root_dir, name=run_name)
    version = first.version
    label = f"{run_name}/version_{version}"
    loggers: list[Logger] = [first]
    for name in ordered[1:]:
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(root_dir, name=run_name, version=version))
        elif name == "csv":
            loggers.append(CSVLogger(root_dir, name=run_name, version=version))
        elif name == "wandb":
            loggers.append(WandbLogger(name=label, save_dir=str(Path(root_dir) / run_name / f"version_{version}"),
                                       project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT)))
        else:
            uri = os.environ.get("MLFLOW_TRACKING_URI")
            if not uri:  # MLflow 3 keeps its file store for this only when asked (MLFLOW_ALLOW_FILE_STORE)
                uri = (Path(root_dir).resolve() / "mlruns").as_uri()
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            loggers.append(MLFlowLogger(experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_PROJECT),
                                        run_name=label, tracking_uri=uri))
    return loggers


def log_table(loggers: list[Logger], key: str, columns: list[str], rows: list[list], markdown: str, step: int) -> None:
    """A table to every logger that shows tables: TensorBoard as Markdown text, W&B as a table,
    MLflow as a JSON artifact (its table layout); the CSV logger has none."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(key, markdown, step)
        elif isinstance(logger, WandbLogger):
            logger.log_text(key=key, columns=columns, data=rows, step=step)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_dict(logger.run_id, {"columns": columns, "data": rows}, f"{key}/step_{step:06d}.json")


def log_config(loggers: list[Logger], cfg) -> None:
    """The run's resolved config (defaults, YAML, overrides, prompt settings) as every logger's hyperparameters."""
    from omegaconf import OmegaConf

    params = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    for logger in loggers:
        logger.log_hyperparams(params)
