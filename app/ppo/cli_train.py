"""`python -m app train [CONFIG] key=value ...`"""

from __future__ import annotations

import argparse

from app.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (e.g. configs/quickstart.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. ppo.lr=1e-5 trainer.max_steps=50")


def run(args: argparse.Namespace) -> int:
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # only overrides were given
        config, overrides = None, [config, *overrides]
    cfg = load_config(config, overrides)
    from app.ppo.train import train  # heavy imports only once the config is valid

    _, trainer = train(cfg)
    log_dir = trainer.log_dir  # a collective under DDP: every rank asks
    if trainer.is_global_zero:  # under torchrun / fabric run every rank gets here
        print(f"logs and checkpoints: {log_dir}")
    return 0
