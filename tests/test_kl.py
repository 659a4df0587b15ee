"""KL controllers: hand-computed updates, state round-trip, settings checks."""

import pytest

from solver_ppo.config import KLSettings
from solver_ppo.errors import UserError
from solver_ppo.ppo.kl import AdaptiveKLController, FixedKLController, build_kl_controller


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 8)
    assert ctl.value == 0.05


def test_adaptive_update_by_hand():
    ctl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=100)
    # KL 7.2: error 7.2/6 - 1 = 0.2 -> beta = 0.1 * (1 + 0.2 * 10/100) = 0.102
    ctl.update(7.2, 10)
    assert ctl.value == pytest.approx(0.102)
    # KL 3.0: error -0.5 clipped to -0.2 -> 0.102 * (1 - 0.2 * 50/100) = 0.0918
    ctl.update(3.0, 50)
    assert ctl.value == pytest.approx(0.0918)
    # KL 60: error 9 clipped to +0.2 -> 0.0918 * 1.02
    ctl.update(60.0, 10)
    assert ctl.value == pytest.approx(0.0918 * 1.02)
    # on target: unchanged
    before = ctl.value
    ctl.update(6.0, 10)
    assert ctl.value == pytest.approx(before)


def test_state_round_trip():
    ctl = AdaptiveKLController(0.1, 6.0, 100)
    ctl.update(7.2, 10)
    fresh = AdaptiveKLController(0.1, 6.0, 100)
    fresh.load_state_dict(ctl.state_dict())
    assert fresh.value == ctl.value
    fresh.update(1.0, 10)
    ctl.update(1.0, 10)
    assert fresh.value == ctl.value
    fixed = FixedKLController(0.3)
    fixed.load_state_dict({"value": 0.25})
    assert fixed.value == 0.25


def test_build_from_settings():
    assert isinstance(build_kl_controller(KLSettings()), FixedKLController)
    ctl = build_kl_controller(KLSettings(controller="adaptive", coef=0.2, target=4.0, horizon=50))
    assert isinstance(ctl, AdaptiveKLController)
    assert (ctl.value, ctl.target, ctl.horizon) == (0.2, 4.0, 50)


@pytest.mark.parametrize(
    "settings, message",
    [
        (KLSettings(controller="pid"), "ppo.kl.controller='pid'"),
        (KLSettings(estimator="k9"), "ppo.kl.estimator='k9'"),
    ],
)
def test_bad_settings_name_the_key(settings, message):
    with pytest.raises(UserError, match=message):
        build_kl_controller(settings)
