"""`solver-ppo sft [CONFIG] key=value ... [--print-config]`: supervised warm start, writes a checkpoint directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from solver_ppo.cli import add_config_arguments, config_from_args
from solver_ppo.config import SFTConfig, check_values, validates
from solver_ppo.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/quickstart_sft.yaml", "sft.max_steps=200 output_dir=DIR")


def train_sft(cfg: SFTConfig) -> Path:
    import lightning.pytorch as pl
    import torch

    from solver_ppo.data.datamodule import PromptDataModule
    from solver_ppo.data.limits import check_lengths
    from solver_ppo.data.prompts import PromptSettings, use_trained_prompt_settings, write_prompt_settings
    from solver_ppo.distributed import build_strategy, lightning_trainer, shards_model
    from solver_ppo.loggers import build_loggers, log_config
    from solver_ppo.models.export import write_checkpoint
    from solver_ppo.models.loading import load_model, load_prompt_encoder
    from solver_ppo.paths import writable_dir
    from solver_ppo.sft.module import SFTModule

    check_values(cfg)
    if Path(cfg.output_dir).resolve() == Path(cfg.model.path).resolve():
        raise UserError(f"output_dir={cfg.output_dir} is the base model's directory (model.path); choose a new directory")
    writable_dir(cfg.trainer.root_dir, f"trainer.root_dir={cfg.trainer.root_dir}")
    out = writable_dir(cfg.output_dir, f"output_dir={cfg.output_dir}")
    # everything that can reject the settings comes before the model, which may take minutes to load
    datamodule = PromptDataModule(
        cfg.data, prompts_per_step=cfg.sft.batch_size, seed=cfg.seed,
        whole_val_on_every_rank=shards_model(cfg.trainer),
    )
    t, validate = cfg.trainer, validates(cfg)
    trainer = lightning_trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=build_strategy(t),
        precision=t.precision, max_steps=cfg.sft.max_steps, max_epochs=-1,
        logger=build_loggers(t.loggers, t.root_dir, cfg.run_name),
        log_every_n_steps=t.log_every_n_steps, enable_checkpointing=False,
        val_check_interval=t.val_every if validate else None, limit_val_batches=None if validate else 0,
        num_sanity_val_steps=0,
        enable_progress_bar=t.enable_progress_bar, enable_model_summary=False, use_distributed_sampler=False,
    )
    use_trained_prompt_settings(cfg)
    tokenizer, chat = load_prompt_encoder(cfg.model)
    for split in ("train", "val") if cfg.data.val else ("train",):
        check_lengths(cfg, lambda messages: chat.encode_prompt(tokenizer, messages), tokenizer, sft=True, split=split)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.cpu_threads > 0:
        torch.set_num_threads(cfg.trainer.cpu_threads)
    module = SFTModule(cfg, load_model(cfg.model))
    log_config(trainer.loggers, cfg)
    trainer.fit(module, datamodule=datamodule)
    if trainer.global_step == 0:  # every rank sees the same count
        raise UserError(f"SFT took no optimizer step in {module.batches} batches; no model written to {out}")
    if module.sharded:  # gather on every rank; rank 0 puts the weights into an unsharded copy
        state = module.full_state_dict()
        if trainer.is_global_zero:
            module = SFTModule(cfg, load_model(cfg.model))
            module.model.load_state_dict(state)
    if trainer.is_global_zero:
        model = module.model
        if cfg.model.lora.enabled:
            model = model.merge_and_unload()
        write_checkpoint(model, cfg.model.path, out, dtype=cfg.model.dtype)
        write_prompt_settings(out, PromptSettings(cfg.data.system_prompt, cfg.data.instruction, module.chat.name))
        print(f"SFT model written to {out} ({trainer.global_step} optimizer steps)")
    trainer.strategy.barrier()
    return out


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, SFTConfig)
    if cfg is not None:  # None: --print-config printed it
        train_sft(cfg)
    return 0
