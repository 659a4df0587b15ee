"""KL coefficient (beta) controllers: fixed, or adaptive toward a target KL (Ziegler et al. 2019).

Their state goes into checkpoints, so a resumed run continues with the same beta.
"""

from __future__ import annotations

from solver_ppo.config import KLSettings
from solver_ppo.errors import UserError
from solver_ppo.ppo.losses import KL_ESTIMATORS


class FixedKLController:
    """beta stays at `coef`."""

    def __init__(self, coef: float):
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt; present so the training loop treats both controllers alike."""

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """beta *= 1 + clip(KL / target - 1, ±0.2) * n_steps / horizon after each batch.

    `current_kl` is the measured KL per sequence; `n_steps` the number of samples it came from.
    """

    def __init__(self, init_coef: float, target: float, horizon: int):
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


def build_kl_controller(settings: KLSettings) -> FixedKLController | AdaptiveKLController:
    """The controller named by `ppo.kl.controller`, after checking the names in the KL settings
    (their numbers: `solver_ppo.config.RANGES`)."""
    if settings.estimator not in KL_ESTIMATORS:
        raise UserError(f"ppo.kl.estimator='{settings.estimator}' is not one of {', '.join(KL_ESTIMATORS)}")
    if settings.controller == "fixed":
        return FixedKLController(settings.coef)
    if settings.controller == "adaptive":
        return AdaptiveKLController(settings.coef, settings.target, settings.horizon)
    raise UserError(f"ppo.kl.controller='{settings.controller}' is not one of fixed, adaptive")
