"""Builds the PPO run from a TrainConfig: model stack, module, data, callbacks, Trainer."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import lightning.pytorch as pl
import torch

from solver_ppo.config import TrainConfig, check_values, validates
from solver_ppo.data.datamodule import PromptDataModule
from solver_ppo.data.limits import check_lengths
from solver_ppo.data.prompts import use_trained_prompt_settings
from solver_ppo.distributed import build_strategy, lightning_trainer, shards_model
from solver_ppo.errors import UserError
from solver_ppo.loggers import build_loggers, log_config
from solver_ppo.models.loading import load_model, load_prompt_encoder
from solver_ppo.models.policy import build_policy
from solver_ppo.paths import writable_dir
from solver_ppo.ppo.kl import build_kl_controller
from solver_ppo.ppo.module import PPOModule
from solver_ppo.callbacks.checkpoint import IterationCheckpoint, PromptSettingsFile
from solver_ppo.callbacks.sample_logger import SampleLogger
from solver_ppo.callbacks.solver_reward import SolverReward


def build_trainer(cfg: TrainConfig, extra_callbacks: list | None = None) -> pl.Trainer:
    # PPOModule sets train/eval mode itself (eval to sample, train to update) and the frozen
    # reference stays in eval mode: Lightning's warning about eval-mode modules is expected here.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    t, validate = cfg.trainer, validates(cfg)
    callbacks = [
        SolverReward(cfg.evaluation),
        SampleLogger(t.sample_log_every),
        IterationCheckpoint(t.checkpoint_every),
        PromptSettingsFile(),
        *(extra_callbacks or []),
    ]
    return lightning_trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(t),
        precision=t.precision,
        max_epochs=-1,  # the prompt stream is endless; PPOModule stops after trainer.max_steps iterations
        max_steps=-1,
        logger=build_loggers(t.loggers, t.root_dir, cfg.run_name),
        callbacks=callbacks,
        log_every_n_steps=t.log_every_n_steps,
        enable_checkpointing=False,  # IterationCheckpoint counts PPO iterations, not optimizer steps
        enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,  # the prompt stream shards itself by rank and worker
        num_sanity_val_steps=0,
        # with data.val: every val_every PPO steps (the prompt stream has no epochs)
        val_check_interval=t.val_every if validate else None,
        check_val_every_n_epoch=None if validate else 1,
        limit_val_batches=None if validate else 0,
    )


def check_ppo_settings(cfg: TrainConfig) -> None:
    """Settings the schema's types cannot check, before any model is loaded."""
    ppo = cfg.ppo
    check_values(cfg)
    writable_dir(cfg.trainer.root_dir, f"trainer.root_dir={cfg.trainer.root_dir}")
    build_kl_controller(ppo.kl)  # checks the estimator and controller names
    if ppo.advantage in ("rloo", "grpo") and ppo.samples_per_prompt < 2:
        raise UserError(
            f"ppo.advantage={ppo.advantage} compares the samples of a prompt: set ppo.samples_per_prompt >= 2 "
            f"(it is {ppo.samples_per_prompt})"
        )
    if cfg.evaluation.labels == "votes" and ppo.samples_per_prompt < 2:
        raise UserError(f"evaluation.labels=votes labels a prompt by the votes of its samples: set ppo.samples_per_prompt >= 2 "
                        f"(it is {ppo.samples_per_prompt})")
    if ppo.dynamic_sampling_rounds and ppo.samples_per_prompt < 2:
        raise UserError(
            "ppo.dynamic_sampling_rounds drops prompts whose samples all score the same: set ppo.samples_per_prompt >= 2 "
            f"(it is {ppo.samples_per_prompt})"
        )
    if ppo.overlong_buffer > cfg.sampling.max_new_tokens:
        raise UserError(
            f"ppo.overlong_buffer={ppo.overlong_buffer} is longer than sampling.max_new_tokens={cfg.sampling.max_new_tokens}: "
            "it is the last part of that limit"
        )


def train(cfg: TrainConfig, extra_callbacks: list | None = None) -> tuple[PPOModule, pl.Trainer]:
    if cfg.resume is not None and not Path(cfg.resume).is_file():
        raise UserError(f"resume checkpoint not found: {cfg.resume}")
    if cfg.resume is not None and not zipfile.is_zipfile(cfg.resume):  # what torch.save writes
        raise UserError(f"resume={cfg.resume} is not a checkpoint; pass a .ckpt from logs/RUN/version_N/checkpoints/")
    check_ppo_settings(cfg)
    if cfg.rollout.turns > 1:  # the policy reads what the evaluation found (objective, values, infeasible subset)
        cfg.evaluation.feedback = True
    # everything that can reject the settings comes before the model, which may take minutes to load
    datamodule = PromptDataModule(
        cfg.data, prompts_per_step=cfg.ppo.prompts_per_step, seed=cfg.seed,
        whole_val_on_every_rank=shards_model(cfg.trainer), require_answer=cfg.evaluation.labels == "reference",
    )
    trainer = build_trainer(cfg, extra_callbacks)
    use_trained_prompt_settings(cfg)
    tokenizer, chat = load_prompt_encoder(cfg.model)
    for split in ("train", "val") if cfg.data.val else ("train",):
        check_lengths(cfg, lambda messages: chat.encode_prompt(tokenizer, messages), tokenizer, sft=False, split=split)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.cpu_threads > 0:
        torch.set_num_threads(cfg.trainer.cpu_threads)
    loaded = load_model(cfg.model)
    module = PPOModule(cfg, loaded, build_policy(loaded, cfg.model))
    log_config(trainer.loggers, cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.resume)
    return module, trainer
