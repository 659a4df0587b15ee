"""Saves a checkpoint every N PPO iterations, atomically, plus `last.ckpt` for `resume=`; and the
prompt settings the run trains with, in its run directory (what `eval` and `export` read).

Lightning's ModelCheckpoint counts optimizer steps; a PPO iteration takes several, so this
callback counts iterations instead. Files are written under a temporary name and renamed, so a
run killed mid-save (kill -9) never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from solver_ppo.data.prompts import PromptSettings, write_prompt_settings


class IterationCheckpoint(Callback):
    def __init__(self, every_n_iterations: int):
        self.every = every_n_iterations
        self.dirpath: Path | None = None
        self.saved = -1  # the last iteration saved: a batch skipped as too long is no iteration

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        root = trainer.log_dir or trainer.default_root_dir
        self.dirpath = Path(root) / "checkpoints"

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        done = pl_module.iteration
        if self.every > 0 and done > self.saved and done > 0 and (done % self.every == 0 or trainer.should_stop):
            self.save(trainer, done)
            self.saved = done

    def save(self, trainer: Trainer, iteration: int) -> Path:
        final = self.dirpath / f"iter-{iteration:06d}.ckpt"
        tmp = final.with_suffix(".ckpt.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # the full, resumable state; every rank calls it, rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, final)
            last_tmp = self.dirpath / "last.ckpt.tmp"
            shutil.copyfile(final, last_tmp)
            os.replace(last_tmp, self.dirpath / "last.ckpt")
        trainer.strategy.barrier()
        return final


class PromptSettingsFile(Callback):
    """prompt_settings.json in the run directory when training starts: the run's checkpoints and
    trainable.pt are evaluated (and exported) with the prompts they were trained on."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a collective under DDP: every rank asks
        if trainer.is_global_zero:
            run_dir.mkdir(parents=True, exist_ok=True)
            d = pl_module.cfg.data
            write_prompt_settings(run_dir, PromptSettings(d.system_prompt, d.instruction, pl_module.chat.name))
