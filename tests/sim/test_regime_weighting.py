"""Regime weighting of the hybrid's regularisers: hand-worked terms, off is exact, a flat book, gradients, config."""

from __future__ import annotations

import math

import pytest
import torch

from diffquant.config import LossConfig, SimConfig, from_dict
from diffquant.sim.losses import Objective, flat_share, regime_weights
from diffquant.sim.simulator import held_positions, simulate

BAND = {"lambda_band": 1.0, "band_low": 0.3, "band_high": 0.4}


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def test_regime_weights_hand_worked():
    vol = t64([0.01, 0.03])
    # batch reference 0.02: ratios 0.5 and 1.5 (eps 1e-8 moves them by < 1e-6)
    assert regime_weights(vol, LossConfig(regime_power=1.0)).tolist() == pytest.approx([0.5, 1.5], rel=1e-6)
    assert regime_weights(vol, LossConfig(regime_power=2.0)).tolist() == pytest.approx([0.25, 2.25], rel=1e-6)
    assert regime_weights(vol, LossConfig(regime_power=-1.0)).tolist() == pytest.approx([2.0, 2 / 3], rel=1e-6)
    # fixed reference 0.01: ratios 1 and 3; the clip caps 3 at 2 and raises 0.5^4 = 0.0625 to 0.25
    fixed = LossConfig(regime_power=1.0, regime_reference="fixed", regime_vol=0.01, regime_max_weight=2.0)
    assert regime_weights(vol, fixed).tolist() == pytest.approx([1.0, 2.0], rel=1e-6)
    assert regime_weights(vol, LossConfig(regime_power=4.0))[0].item() == 0.25
    # a flat context (vol 0) stays finite at any power
    assert torch.isfinite(regime_weights(t64([0.0, 0.02]), LossConfig(regime_power=-2.0))).all()


def test_weighted_hybrid_hand_worked():
    """Two episodes with weights 0.25 and 2.25 (power 2, batch reference): every term by hand."""
    cfg = LossConfig(regime_power=2.0, **BAND)
    objective = Objective(cfg, 1e-20)
    d = t64([[0.0, 0.5, 0.5, -0.5], [0.0, 0.0, 0.0, 0.5]])
    pnl = torch.expm1(t64([[-0.1, 0.0, 0.0, 0.0], [0.2, -0.2, 0.0, 0.0]]))  # drawdowns 0.1 x4 | 0, 0.2 x3
    loss, terms = objective(pnl, d, t64([0.01, 0.03]))
    w1, w2 = 0.25, 2.25
    # per episode: turnover 0.5 and 1/6; terminal 0.5 and 0.5; mean drawdown 0.1 and 0.15; band 0.1^2, (0.3-1/6)^2
    assert terms["turnover"].item() == pytest.approx((w1 * 0.5 + w2 / 6) / 2, rel=1e-6)
    assert terms["terminal"].item() == pytest.approx((w1 * 0.5 + w2 * 0.5) / 2, rel=1e-6)
    assert terms["drawdown"].item() == pytest.approx((w1 * 0.1 + w2 * 0.15) / 2, rel=1e-6)
    assert terms["band"].item() == pytest.approx((w1 * 0.1**2 + w2 * (0.3 - 1 / 6) ** 2) / 2, rel=1e-6)
    # the pooled terms carry the batch's mean weight, 1.25
    assert terms["bias"].item() == pytest.approx(1.25 * (0.5 + 0.5 - 0.5 + 0.5) / 8, rel=1e-6)
    flat = (flat_share(d, cfg.flat_eps, cfg.flat_k).item() - cfg.flat_target) ** 2
    assert terms["flat"].item() == pytest.approx(1.25 * flat, rel=1e-6)
    # the core is not weighted, and the loss is the lambda-weighted sum
    unweighted, plain = Objective(LossConfig(**BAND), 1e-20)(pnl, d)
    assert terms["core"].item() == plain["core"].item()
    lambdas = {
        "core": 1.0,
        "turnover": cfg.lambda_turnover,
        "drawdown": cfg.lambda_drawdown,
        "terminal": cfg.lambda_terminal,
        "flat": cfg.lambda_flat,
        "bias": cfg.lambda_bias,
        "band": cfg.lambda_band,
    }
    assert loss.item() == pytest.approx(sum(lambdas[k] * v.item() for k, v in terms.items()), rel=1e-12)
    assert loss.item() != pytest.approx(unweighted.item(), rel=1e-3)


def test_off_is_the_unweighted_loss_bit_for_bit():
    gen = torch.Generator().manual_seed(1)
    d = torch.tanh(torch.randn(6, 10, generator=gen))
    pnl = 0.01 * torch.randn(6, 10, generator=gen)
    vol = 0.01 * torch.rand(6, generator=gen)
    off = Objective(LossConfig(**BAND), 1e-6)
    assert torch.equal(off(pnl, d, vol)[0], off(pnl, d)[0])  # regime_power 0 never reads the vols
    # weights of exactly 1 (every vol at the fixed reference) give the unweighted loss up to rounding
    ones = Objective(LossConfig(regime_power=1.5, regime_reference="fixed", regime_vol=0.004, **BAND), 1e-6)
    torch.testing.assert_close(ones(pnl, d, torch.full((6,), 0.004))[0], off(pnl, d)[0], rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="context volatility"):
        ones(pnl, d)


@pytest.mark.parametrize("vols", [[0.004, 0.004, 0.004], [0.002, 0.004, 0.012]])
def test_flat_book_gets_the_documented_value(vols):
    """A flat book: mean weight x (lambda_flat (sigmoid(k flat_eps) - flat_target)^2 + lambda_band band_low^2).

    (eps moves the weights by < 1e-5 relative.)
    """
    cfg = LossConfig(regime_power=1.0, regime_reference="fixed", regime_vol=0.004, **BAND)
    zeros = torch.zeros(3, 8, dtype=torch.float64)
    loss, terms = Objective(cfg, 1e-6)(zeros, zeros, t64(vols))
    mean_weight = sum(v / 0.004 for v in vols) / 3
    flat = cfg.lambda_flat * (1 / (1 + math.exp(-cfg.flat_k * cfg.flat_eps)) - cfg.flat_target) ** 2
    assert loss.item() == pytest.approx(mean_weight * (flat + cfg.lambda_band * cfg.band_low**2), rel=1e-6)
    assert terms["core"].item() == 0.0 and terms["turnover"].item() == 0.0 and terms["drawdown"].item() == 0.0


@pytest.mark.parametrize(("core", "reference"), [("sharpe", "batch"), ("cdar", "fixed"), ("calmar", "batch")])
def test_weighted_hybrid_gradient_matches_finite_differences(core, reference):
    sim = SimConfig(smooth_abs_eps=1e-4, impact_eta=0.02, execution_lag_bars=1)
    cfg = LossConfig(
        core=core,
        regime_power=1.5,
        regime_reference=reference,
        regime_vol=0.01,
        cdar_alpha=0.8,
        dd_temperature=100.0,
        **{**BAND, "band_low": 0.65, "band_high": 0.7},
    )
    objective = Objective(cfg, sim.smooth_abs_eps)
    gen = torch.Generator().manual_seed(3)
    decisions = (0.8 * torch.tanh(torch.randn(3, 8, generator=gen, dtype=torch.float64))).requires_grad_()
    returns = 0.01 * torch.randn(3, 8, generator=gen, dtype=torch.float64)
    funding = 1e-4 * torch.randn(3, 8, generator=gen, dtype=torch.float64)
    vol = t64([0.003, 0.01, 0.02])

    def loss(d):
        pnl = simulate(held_positions(d, sim.execution_lag_bars), returns, funding, sim).net
        return objective(pnl, d, vol)[0]

    assert torch.autograd.gradcheck(loss, (decisions,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_the_keys_parse_and_the_description_names_the_weighting():
    cfg = from_dict({"loss": {"regime_power": 1.0, "regime_reference": "fixed", "regime_vol": 0.01}}).loss
    assert (cfg.regime_power, cfg.regime_reference, cfg.regime_vol) == (1.0, "fixed", 0.01)
    assert repr(Objective(cfg, 1e-6)).endswith("; regularisers x clip((vol/0.01)^1.0, 0.25, 4.0)")
    assert "regime" not in repr(Objective(LossConfig(), 1e-6)) and "vol" not in repr(Objective(LossConfig(), 1e-6))
