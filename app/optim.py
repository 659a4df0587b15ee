"""Learning-rate schedules shared by SFT and PPO (warmup, then constant / linear / cosine)."""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES = ("constant", "linear", "cosine")


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the base LR at step `step`, for torch.optim.lr_scheduler.LambdaLR."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr_schedule '{schedule}'; choose one of {', '.join(SCHEDULES)}")

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor
