"""`solver-ppo train [CONFIG] key=value ... [--print-config]`"""

from __future__ import annotations

import argparse

from solver_ppo.cli import add_config_arguments, config_from_args
from solver_ppo.config import TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/quickstart.yaml", "ppo.lr=1e-5 trainer.max_steps=50")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, TrainConfig)
    if cfg is None:  # --print-config
        return 0
    from solver_ppo.ppo.train import train  # heavy imports only once the config is valid

    _, trainer = train(cfg)
    log_dir = trainer.log_dir  # a collective under DDP: every rank asks
    if trainer.is_global_zero:  # under torchrun / fabric run every rank gets here
        print(f"logs and checkpoints: {log_dir}")
    return 0
