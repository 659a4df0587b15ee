"""`trainer.loggers`: Lightning's TensorBoard, CSV, W&B (offline) and MLflow (file store) loggers
receive the same metrics, the sample tables and the resolved config from one real PPO run."""

from __future__ import annotations

import csv
import json

import pytest

from solver_ppo.callbacks.sample_logger import COLUMNS
from solver_ppo.config import load_config
from test_ppo_train import overrides, problems_file, run_dir, scalars  # noqa: F401 (a fixture)

import wandb  # noqa: E402 (the loggers extra, which the tests install: tools/setup.sh --tests)


@pytest.mark.slow
def test_every_logger_gets_the_metrics_the_samples_and_the_config(tiny_chatglm_dir, problems_file, tmp_path,  # noqa: F811
                                                                 monkeypatch):
    from mlflow.tracking import MlflowClient

    from solver_ppo.ppo.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    cfg = load_config(None, overrides(tiny_chatglm_dir, problems_file, tmp_path, **{
        "trainer.loggers": "[wandb,mlflow,csv,tensorboard]", "trainer.sample_log_every": 1,
        "trainer.checkpoint_every": 0}))
    _, trainer = train(cfg)
    [run_wandb] = [logger.experiment for logger in trainer.loggers if type(logger).__name__ == "WandbLogger"]
    wandb_summary, wandb_config = dict(run_wandb.summary), dict(run_wandb.config)
    wandb.finish()

    run = run_dir(tmp_path)
    assert run.name == "version_0" and (run / "trainable.pt").is_file()  # csv sorted first, all in one directory
    tensorboard = scalars(run)["solver/reward"]
    with open(run / "metrics.csv") as fh:
        from_csv = [float(row["solver/reward"]) for row in csv.DictReader(fh) if row.get("solver/reward")]
    assert len(tensorboard) == 2 and from_csv == pytest.approx(tensorboard)

    client = MlflowClient((tmp_path / "mlruns").as_uri())
    [mlrun] = client.search_runs([client.get_experiment_by_name("solver-ppo").experiment_id])
    assert mlrun.info.run_name == "ppo/version_0"
    assert [m.value for m in client.get_metric_history(mlrun.info.run_id, "solver/reward")] == pytest.approx(tensorboard)
    assert mlrun.data.params["ppo/lr"] == "0.01" and mlrun.data.params["trainer/loggers"].startswith("[")
    table = json.loads(open(client.download_artifacts(mlrun.info.run_id, "samples/step_000001.json", str(tmp_path))).read())
    assert table["columns"] == COLUMNS and len(table["data"]) == 4

    assert wandb_summary["solver/reward"] == pytest.approx(tensorboard[-1])
    assert wandb_config["ppo"]["lr"] == 0.01 and wandb_config["trainer"]["loggers"] == ["wandb", "mlflow", "csv", "tensorboard"]
    [offline] = (run / "wandb").glob("offline-run-*")
    tables = [json.loads(p.read_text()) for p in (offline / "files" / "media" / "table").glob("samples_*.table.json")]
    assert len(tables) == 2 and all(t["columns"] == COLUMNS and len(t["data"]) == 4 for t in tables)
