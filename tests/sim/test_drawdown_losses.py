"""Drawdown losses (calmar, cdar) and the turnover band: hand-worked values, flat book, bounds, config, gradients."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from diffquant.config import LossConfig, SimConfig, from_dict
from diffquant.errors import ConfigError
from diffquant.sim.drawdown_losses import (
    calmar_ratio,
    cdar,
    cdar_ratio,
    drawdown_path,
    smooth_max_drawdown,
    tail_count,
)
from diffquant.sim.losses import Objective, sharpe_ratio, turnover_band
from diffquant.sim.simulator import held_positions, simulate

NO_REGULARISERS = {
    "lambda_turnover": 0.0,
    "lambda_drawdown": 0.0,
    "lambda_terminal": 0.0,
    "lambda_flat": 0.0,
    "lambda_bias": 0.0,
}


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def from_logs(logs) -> torch.Tensor:
    """Per-bar simple returns whose log-returns are ``logs``: log-equity is then their running sum."""
    return torch.expm1(t64(logs))


def test_calmar_hand_worked():
    # episode 1: log-returns -0.1, 0, 0 -> log-equity -0.1 all along, peak 0: drawdowns 0.1, 0.1, 0.1
    # episode 2: log-returns 0.2, -0.2, 0 -> log-equity 0.2, 0, 0, peak 0.2: drawdowns 0, 0.2, 0.2
    pnl = from_logs([[-0.1, 0.0, 0.0], [0.2, -0.2, 0.0]])
    assert drawdown_path(pnl).flatten().tolist() == pytest.approx([0.1, 0.1, 0.1, 0.0, 0.2, 0.2], abs=1e-15)
    # k = 10: log(3 e^1) / 10 = 0.1 + log(3) / 10 and log(e^0 + 2 e^2) / 10
    k = 10.0
    smooth = [0.1 + math.log(3) / k, math.log(1 + 2 * math.exp(2.0)) / k]
    assert smooth_max_drawdown(pnl, k).tolist() == pytest.approx(smooth, rel=1e-12)
    # mean of the six simple returns over the mean smooth max drawdown of the two episodes
    mean = (math.expm1(-0.1) + math.expm1(0.2) + math.expm1(-0.2)) / 6
    assert calmar_ratio(pnl, k, 1e-8).item() == pytest.approx(mean / (sum(smooth) / 2 + 1e-8), rel=1e-12)
    # a hot temperature: the smooth max is the hard one, 0.1 and 0.2
    assert calmar_ratio(pnl, 1e6, 0.0).item() == pytest.approx(mean / 0.15, rel=1e-4)


def test_cdar_hand_worked():
    # episode 1: log-equity -0.1, -0.3, 0, 0, -0.05 under peak 0: drawdowns 0.1, 0.3, 0, 0, 0.05
    # episode 2: log-equity 0.1, -0.15, -0.1, 0.1, 0 under peak 0.1: drawdowns 0, 0.25, 0.2, 0, 0.1
    pnl = from_logs([[-0.1, -0.2, 0.3, 0.0, -0.05], [0.1, -0.25, 0.05, 0.2, -0.1]])
    # pooled, worst first: 0.3, 0.25, 0.2, 0.1, 0.1, 0.05, 0, 0, 0, 0
    assert cdar(pnl, 0.8).item() == pytest.approx((0.3 + 0.25) / 2, rel=1e-12)  # worst 20% of 10 bars: 2
    assert cdar(pnl, 0.7).item() == pytest.approx((0.3 + 0.25 + 0.2) / 3, rel=1e-12)
    assert cdar(pnl, 0.5).item() == pytest.approx((0.3 + 0.25 + 0.2 + 0.1 + 0.1) / 5, rel=1e-12)
    assert cdar(pnl, 0.999).item() == pytest.approx(0.3, rel=1e-12)  # at least the worst bar
    assert cdar_ratio(pnl, 0.8, 1e-8).item() == pytest.approx(pnl.mean().item() / (0.275 + 1e-8), rel=1e-12)


@pytest.mark.parametrize(("n", "alpha", "count"), [(20, 0.95, 1), (3072, 0.95, 154), (10, 0.99, 1), (100, 0.9, 10)])
def test_tail_count(n, alpha, count):
    assert tail_count(n, alpha) == count


def test_turnover_band_hand_worked():
    # episode 1: |changes| 0.5, 0, 1 -> pace 0.5, above 0.3 by 0.2; episode 2: 0, 0, 0.03 -> 0.01, below 0.05 by 0.04
    d = t64([[0.0, 0.5, 0.5, -0.5], [0.0, 0.0, 0.0, 0.03]])
    assert turnover_band(d, 1e-20, 0.05, 0.3).item() == pytest.approx((0.2**2 + 0.04**2) / 2, rel=1e-9)
    # a pace inside the band costs nothing, whichever side of it the other episode is
    assert turnover_band(d[:1], 1e-20, 0.1, 0.6).item() == 0.0
    assert turnover_band(d, 1e-20, 0.0, 0.6).item() == 0.0  # the lower edge 0 never acts
    assert turnover_band(d, 1e-20, 0.6, 0.6).item() == pytest.approx((0.1**2 + 0.59**2) / 2, rel=1e-9)


def test_smooth_max_drawdown_bounds_the_hard_max_and_converges():
    gen = torch.Generator().manual_seed(5)
    pnl = 0.01 * torch.randn(6, 40, generator=gen, dtype=torch.float64) - 0.001
    hard = drawdown_path(pnl).max(dim=1).values
    assert (hard > 0).all()
    gaps = []
    for k in (10.0, 100.0, 1e3, 1e4, 1e5):
        gap = smooth_max_drawdown(pnl, k) - hard
        assert (gap >= -1e-15).all() and (gap <= math.log(40) / k + 1e-15).all(), k  # 1e-15: rounding
        gaps.append(gap.max().item())
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-4


@pytest.mark.parametrize("loss_type", ["calmar", "cdar"])
def test_flat_book_core_is_zero_with_finite_gradient(loss_type):
    """A flat book has no drawdown and no mean: the documented core value is exactly 0 (not NaN), standalone and as
    the hybrid's core."""
    sim = SimConfig()
    gen = torch.Generator().manual_seed(0)
    returns = 0.005 * torch.randn(16, 24, generator=gen)
    funding = 1e-4 * torch.randn(16, 24, generator=gen)
    decisions = torch.zeros(16, 24, requires_grad=True)
    for cfg in (LossConfig(type=loss_type), LossConfig(type="hybrid", core=loss_type)):
        pnl = simulate(held_positions(decisions, sim.execution_lag_bars), returns, funding, sim).net
        assert (pnl == 0).all()
        loss, terms = Objective(cfg, sim.smooth_abs_eps)(pnl, decisions)
        assert terms["core"].item() == 0.0
        if cfg.type != "hybrid":
            assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, decisions)
        assert torch.isfinite(grad).all()


def test_loss_type_switches_the_objective():
    gen = torch.Generator().manual_seed(2)
    pnl = 0.01 * torch.randn(4, 12, generator=gen, dtype=torch.float64) + 0.002
    decisions = torch.tanh(torch.randn(4, 12, generator=gen, dtype=torch.float64))
    calmar, cdar_ = calmar_ratio(pnl, 1000.0, 1e-8).item(), cdar_ratio(pnl, 0.95, 1e-8).item()
    sharpe = sharpe_ratio(pnl, 1e-8).item()
    assert len({round(v, 6) for v in (calmar, cdar_, sharpe)}) == 3

    def loss(**kw):
        return Objective(LossConfig(**kw), 1e-6)(pnl, decisions)[0].item()

    assert loss(type="calmar") == pytest.approx(-calmar, rel=1e-12)
    assert loss(type="cdar") == pytest.approx(-cdar_, rel=1e-12)
    assert loss(type="calmar", dd_temperature=50.0) == pytest.approx(-calmar_ratio(pnl, 50.0, 1e-8).item(), rel=1e-12)
    assert loss(type="cdar", cdar_alpha=0.5) == pytest.approx(-cdar_ratio(pnl, 0.5, 1e-8).item(), rel=1e-12)
    assert loss(type="hybrid", core="calmar", **NO_REGULARISERS) == pytest.approx(-calmar, rel=1e-12)
    assert loss(type="hybrid", core="cdar", **NO_REGULARISERS) == pytest.approx(-cdar_, rel=1e-12)
    # the standalone drawdown losses ignore the hybrid's lambdas, the band's included
    assert loss(type="cdar", lambda_band=5.0, band_high=0.0) == loss(type="cdar")


@pytest.mark.parametrize("core", ["calmar", "cdar"])
def test_hybrid_with_a_drawdown_core_is_the_weighted_sum_of_its_terms(core):
    cfg = LossConfig(
        type="hybrid",
        core=core,
        lambda_sharpe=1.3,
        lambda_turnover=0.7,
        lambda_drawdown=2.1,
        lambda_terminal=0.9,
        lambda_flat=3.0,
        lambda_bias=1.7,
        lambda_band=4.0,
        band_low=0.2,
        band_high=0.5,
    )
    gen = torch.Generator().manual_seed(1)
    decisions = torch.tanh(torch.randn(4, 12, generator=gen, dtype=torch.float64))
    pnl = 0.01 * torch.randn(4, 12, generator=gen, dtype=torch.float64)
    loss, terms = Objective(cfg, 1e-6)(pnl, decisions)
    ratio = calmar_ratio(pnl, cfg.dd_temperature, cfg.eps) if core == "calmar" else cdar_ratio(pnl, 0.95, cfg.eps)
    assert terms["core"].item() == pytest.approx(-ratio.item(), rel=1e-12)
    assert terms["band"].item() == pytest.approx(turnover_band(decisions, 1e-6, 0.2, 0.5).item(), rel=1e-12)
    assert terms["band"].item() > 0  # the band acts on this batch, so its weight is tested
    weights = {"core": 1.3, "turnover": 0.7, "drawdown": 2.1, "terminal": 0.9, "flat": 3.0, "bias": 1.7, "band": 4.0}
    assert set(terms) == set(weights)
    assert loss.item() == pytest.approx(sum(w * terms[k].item() for k, w in weights.items()), rel=1e-12)
    band_only = dataclasses.replace(cfg, lambda_sharpe=0.0, **NO_REGULARISERS)
    assert Objective(band_only, 1e-6)(pnl, decisions)[0].item() == pytest.approx(4.0 * terms["band"].item(), rel=1e-12)


def test_repr_names_the_core_and_the_band_only_when_it_acts():
    assert repr(Objective(LossConfig(type="calmar", dd_temperature=50.0), 1e-6)) == "-calmar(k=50.0)"
    assert repr(Objective(LossConfig(type="cdar"), 1e-6)) == "-cdar(alpha=0.95)"
    default = repr(Objective(LossConfig(), 1e-6))
    assert default.startswith("1.0*(-sharpe) + ") and "band" not in default
    banded = repr(Objective(LossConfig(core="cdar", lambda_band=2.0, band_low=0.01), 1e-6))
    assert banded.startswith("1.0*(-cdar(alpha=0.95)) + ") and banded.endswith(" + 2.0*band[0.01, 0.1]")


def test_drawdown_ratios_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(4)
    # a drift down gives many distinct drawdowns, so the CDaR tail has no tie at its edge
    pnl = (0.01 * torch.randn(3, 10, generator=gen, dtype=torch.float64) - 0.003).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: calmar_ratio(x, 100.0, 1e-8), (pnl,), eps=1e-7, atol=1e-6, rtol=1e-5)
    assert torch.autograd.gradcheck(lambda x: cdar_ratio(x, 0.8, 1e-8), (pnl,), eps=1e-7, atol=1e-6, rtol=1e-5)
    decisions = torch.tanh(torch.randn(4, 8, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda d: turnover_band(d, 1e-4, 0.65, 0.7), (decisions,), eps=1e-6, atol=1e-7)
    # every episode's pace is outside the band, on both sides, or parts of the check would be empty
    pace = (decisions[:, 1:] - decisions[:, :-1]).abs().mean(dim=1)
    assert ((pace < 0.65) | (pace > 0.7)).all() and (pace < 0.65).any() and (pace > 0.7).any()


@pytest.mark.parametrize(
    ("loss", "fragments"),
    [
        ({"band_low": 0.2, "band_high": 0.1}, ("loss.band_low (0.2)", "loss.band_high (0.1)")),
        ({"cdar_alpha": 1.0}, ("loss.cdar_alpha", "out of range (0.0, 1.0)")),
        ({"cdar_alpha": 0.0}, ("loss.cdar_alpha", "out of range (0.0, 1.0)")),
        ({"dd_temperature": 0.0}, ("loss.dd_temperature", "out of range (0.0, inf]")),
        ({"lambda_band": -1.0}, ("loss.lambda_band", "out of range")),
        ({"core": "omega"}, ("loss.core", "'calmar', 'cdar'")),
    ],
)
def test_bad_loss_params_are_refused_naming_the_key(loss, fragments):
    with pytest.raises(ConfigError) as info:
        from_dict({"loss": loss})
    for fragment in fragments:
        assert fragment in str(info.value)


def test_the_new_keys_parse_and_the_band_may_be_a_point():
    cfg = from_dict({"loss": {"type": "cdar", "cdar_alpha": 0.9, "band_low": 0.1, "band_high": 0.1}}).loss
    assert (cfg.type, cfg.cdar_alpha, cfg.band_low, cfg.band_high) == ("cdar", 0.9, 0.1, 0.1)
