"""Pre-training checks: the primary config passes them all, and each check fails on a policy that is broken for it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from diffquant.config import Config, from_dict
from diffquant.model.policy import PolicyNetwork
from diffquant.sim.losses import Objective
from diffquant.train import sanity
from diffquant.train.episodes import EpisodeExecution

CFG = Config()
H = CFG.window.horizon
OBJECTIVE = Objective(CFG.loss, CFG.sim.smooth_abs_eps)

pytestmark = pytest.mark.slow  # every check trains or steps the full-size primary model


def primary_model(seed: int = 42, **head) -> PolicyNetwork:
    torch.manual_seed(seed)
    model_cfg = dataclasses.replace(CFG.model, head=dataclasses.replace(CFG.model.head, **head))
    return PolicyNetwork(model_cfg, 6, CFG.window.context)


def test_primary_config_passes_all_checks():
    # signal_use with 40 instead of 150 steps to keep the suite fast; it clears the bar by a factor of ~10 here
    results = sanity.run_checks(primary_model(), OBJECTIVE, CFG.sim, H, seed=42, signal_steps=40)
    assert [r["name"] for r in results] == ["gradient_flow", "long_bias", "short_bias", "signal_use"]
    assert all(r["passed"] for r in results), results
    by_name = {r["name"]: r["value"] for r in results}
    assert by_name["gradient_flow"] == sum(1 for _ in primary_model().parameters())
    assert by_name["long_bias"] > 0.01 and by_name["short_bias"] < -0.01
    assert by_name["signal_use"] > 1.0


def test_a_gate_stuck_shut_fails_every_check():
    """gate bias -200: sigmoid underflows to 0, every position is exactly 0 and no gradient reaches any weight."""
    results = sanity.run_checks(
        primary_model(gate_bias=-200.0), OBJECTIVE, CFG.sim, H, seed=42, trend_steps=5, signal_steps=5
    )
    assert not any(r["passed"] for r in results), results
    flow = results[0]
    assert flow["value"] == 0 and "dead: backbone.embed.weight" in flow["detail"]
    assert [r["value"] for r in results[1:]] == [0.0, 0.0, 0.0]


def test_signal_use_fails_without_training_and_for_a_feature_blind_policy():
    gen = 45
    untrained = sanity.signal_use(primary_model(), OBJECTIVE, CFG.sim, H, torch.Generator().manual_seed(gen), steps=0)
    assert not untrained.passed and "needs > 0.2" in untrained.detail

    # only the output biases and the state feedback can learn; the features never reach the position
    blind = primary_model()
    with torch.no_grad():
        blind.head.logits.weight.zero_()
    for name, p in blind.named_parameters():
        p.requires_grad_(name in ("head.logits.bias", "head.state.weight"))
    result = sanity.signal_use(blind, OBJECTIVE, CFG.sim, H, torch.Generator().manual_seed(gen), steps=40)
    assert not result.passed and abs(result.value) < 0.2
    trained = sanity.signal_use(primary_model(), OBJECTIVE, CFG.sim, H, torch.Generator().manual_seed(gen), steps=40)
    assert trained.passed  # the same data and steps with a seeing policy


@pytest.mark.parametrize("lag", [0, 2])
def test_signal_use_follows_the_execution_lag(lag):
    """The announced return is the one the decision earns under ``sim.execution_lag_bars``; a misaligned
    announcement would leave nothing to learn."""
    sim = dataclasses.replace(CFG.sim, execution_lag_bars=lag)
    result = sanity.signal_use(primary_model(), OBJECTIVE, sim, H, torch.Generator().manual_seed(45), steps=30)
    assert result.passed, result


@pytest.mark.parametrize("loss_type", ["calmar", "cdar"])
def test_signal_use_is_learnt_with_the_drawdown_losses(loss_type):
    """The planted edge is learnt through the drawdown ratios too (about +1.7 per bar after 40 steps, -0.22 before)."""
    objective = Objective(dataclasses.replace(CFG.loss, type=loss_type), CFG.sim.smooth_abs_eps)
    result = sanity.signal_use(primary_model(), objective, CFG.sim, H, torch.Generator().manual_seed(45), steps=40)
    assert result.passed and result.value > 1.0, result


@pytest.mark.parametrize(
    "regime",
    [
        {"regime_power": 1.0},  # batch reference: weights near 1 on the planted market's even volatility
        {"regime_power": 2.0, "regime_reference": "fixed", "regime_vol": 0.001},  # every regulariser x4 (the clip)
    ],
)
def test_signal_use_is_learnt_with_regime_weighting(regime):
    """The planted edge is learnt with the hybrid's regularisers weighted by the context's volatility regime."""
    objective = Objective(dataclasses.replace(CFG.loss, **regime), CFG.sim.smooth_abs_eps)
    result = sanity.signal_use(primary_model(), objective, CFG.sim, H, torch.Generator().manual_seed(45), steps=40)
    assert result.passed and result.value > 1.0, result


def test_the_checks_run_at_a_decision_cadence_with_band_and_volatility_target():
    """At 8-hourly decisions (1-hour bars) an episode holds ``horizon`` decisions over context + 8 H bars, the
    volatility target reads its per-decision estimates and the band trades the excess: every check runs there and
    passes, and the planted edge (one sign per holding period) is learnt at the cadence."""
    cfg = from_dict(
        {
            "data": {"timeframe_minutes": 60},
            "sim": {"rebalance_at": "funding", "band": 0.05, "vol_target": 0.5, "vol_window": 0},
        }
    )
    execution = EpisodeExecution.of(cfg)
    assert execution.period == 8 and execution.vol_target == 0.5
    torch.manual_seed(42)
    model = PolicyNetwork(cfg.model, 6, cfg.window.context)
    objective = Objective(cfg.loss, cfg.sim.smooth_abs_eps)
    results = sanity.run_checks(model, objective, cfg.sim, H, seed=42, signal_steps=40, execution=execution)
    assert all(r["passed"] for r in results), results
    untrained = sanity.signal_use(
        model, objective, cfg.sim, H, torch.Generator().manual_seed(45), steps=0, execution=execution
    )
    assert not untrained.passed, untrained
