"""Loss functions: hand-worked values, upstream's pathologies fixed, the hybrid's composition, gradients."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from diffquant.config import LossConfig, SimConfig
from diffquant.sim.losses import Objective, drawdown, flat_share, sharpe_ratio, sortino_ratio, terminal, turnover
from diffquant.sim.simulator import held_positions, simulate


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def test_sharpe_and_sortino_hand_worked():
    # mean 0.005; deviations +-0.015 -> unbiased var 4 * 2.25e-4 / 3 = 3e-4, std 0.01 * sqrt(3): Sharpe 1 / (2 sqrt 3)
    # downside: relu(-x) = [0, .01, 0, .01] -> sqrt(mean sq) = sqrt(5e-5) = 0.005 sqrt 2: Sortino 1 / sqrt 2
    pnl = t64([[0.02, -0.01], [0.02, -0.01]])
    assert sharpe_ratio(pnl, 1e-12).item() == pytest.approx(1 / (2 * math.sqrt(3)), rel=1e-9)
    assert sortino_ratio(pnl, 1e-12).item() == pytest.approx(1 / math.sqrt(2), rel=1e-6)
    # the ratios pool all bars: reshaping the batch does not change them
    assert sharpe_ratio(pnl.reshape(1, 4), 1e-12).item() == pytest.approx(sharpe_ratio(pnl, 1e-12).item(), rel=1e-12)


def test_sortino_ignores_upside_spread():
    a, b = t64([[0.01, 0.01, -0.01]]), t64([[0.0, 0.02, -0.01]])
    assert sortino_ratio(a, 1e-12).item() == pytest.approx(sortino_ratio(b, 1e-12).item(), rel=1e-9)
    assert sharpe_ratio(a, 1e-12).item() > sharpe_ratio(b, 1e-12).item()


@pytest.mark.parametrize("loss_type", ["sharpe", "sortino", "hybrid"])
def test_flat_policy_core_loss_is_zero_not_plus_70(loss_type):
    """docs/upstream.md, "Defects fixed" item 1: upstream's idle cost made a flat policy's -Sharpe 7e-7 / 1e-8 = +70."""
    sim = SimConfig()
    gen = torch.Generator().manual_seed(0)
    returns = 0.005 * torch.randn(64, 24, generator=gen)
    funding = 1e-4 * torch.randn(64, 24, generator=gen)
    decisions = torch.zeros(64, 24)
    pnl = simulate(held_positions(decisions, sim.execution_lag_bars), returns, funding, sim).net
    loss, terms = Objective(LossConfig(type=loss_type), sim.smooth_abs_eps)(pnl, decisions)
    assert terms["core"].item() == 0.0
    if loss_type != "hybrid":
        assert loss.item() == 0.0
    # upstream's cost floor, for contrast: sqrt(0 + eps) * rate every bar
    upstream_pnl = pnl - math.sqrt(sim.smooth_abs_eps) * sim.cost_rate
    assert -sharpe_ratio(upstream_pnl, 1e-8).item() == pytest.approx(70.0, rel=1e-3)


def test_drawdown_counts_a_loss_from_the_start():
    # one -10% bar first: log-equity log(0.9) stays 0.10536 under the starting peak 0 for all three bars
    first = t64([[-0.1, 0.0, 0.0]])
    assert drawdown(first).item() == pytest.approx(-math.log(0.9), rel=1e-12)  # upstream: 0 (peak = first bar)
    # -10%, +20%, -5%: log-equity -0.10536, 0.07696, 0.02567; peaks 0, 0.07696, 0.07696; gaps 0.10536, 0, 0.05129
    pnl = t64([[-0.1, 0.2, -0.05]])
    want = (-math.log(0.9) + 0.0 - math.log(0.95)) / 3
    assert drawdown(pnl).item() == pytest.approx(want, rel=1e-12)
    # rising equity has no drawdown; episodes are independent (the peak restarts at 0 in every row)
    assert drawdown(t64([[0.01, 0.02, 0.0], [0.0, 0.0, 0.0]])).item() == 0.0
    assert drawdown(t64([[0.5, 0.0, 0.0], [-0.1, 0.0, 0.0]])).item() == pytest.approx(-math.log(0.9) / 2, rel=1e-12)


def test_hybrid_is_the_weighted_sum_of_its_terms():
    cfg = LossConfig(
        type="hybrid",
        lambda_sharpe=1.3,
        lambda_turnover=0.7,
        lambda_drawdown=2.1,
        lambda_terminal=0.9,
        lambda_flat=3.0,
        lambda_bias=1.7,
        flat_target=0.3,
        flat_eps=0.05,
        flat_k=40.0,
    )
    eps = 1e-6
    gen = torch.Generator().manual_seed(1)
    decisions = torch.tanh(torch.randn(4, 12, generator=gen, dtype=torch.float64))
    pnl = 0.01 * torch.randn(4, 12, generator=gen, dtype=torch.float64)
    loss, terms = Objective(cfg, eps)(pnl, decisions)

    # every term written out from its definition (docs/design_notes.md; docs/upstream.md, "Loss terms")
    m = pnl.mean()
    sharpe = m / (torch.sqrt(((pnl - m) ** 2).sum() / (pnl.numel() - 1)) + cfg.eps)
    d = decisions[:, 1:] - decisions[:, :-1]
    turn = (torch.sqrt(d**2 + eps) - math.sqrt(eps)).mean()
    ell = torch.cumsum(torch.log(1 + pnl), 1)
    peak = torch.maximum(torch.cummax(ell, 1).values, torch.zeros_like(ell))
    dd = (peak - ell).mean()
    term = (torch.sqrt(decisions[:, -1] ** 2 + eps) - math.sqrt(eps)).mean()
    flat = (torch.sigmoid(40.0 * (0.05 - decisions.abs())).mean() - 0.3) ** 2
    bias = decisions.mean().abs()
    manual = {"core": -sharpe, "turnover": turn, "drawdown": dd, "terminal": term, "flat": flat, "bias": bias}
    for k, v in manual.items():
        assert terms[k].item() == pytest.approx(v.item(), rel=1e-9, abs=1e-15), k
    weighted = 1.3 * -sharpe + 0.7 * turn + 2.1 * dd + 0.9 * term + 3.0 * flat + 1.7 * bias
    assert loss.item() == pytest.approx(weighted.item(), rel=1e-12)
    # and each weight acts on its own term only
    zero = {
        f: 0.0
        for f in (
            "lambda_sharpe",
            "lambda_turnover",
            "lambda_drawdown",
            "lambda_terminal",
            "lambda_flat",
            "lambda_bias",
        )
    }
    for key, name in (("lambda_drawdown", "drawdown"), ("lambda_bias", "bias"), ("lambda_flat", "flat")):
        only, _ = Objective(dataclasses.replace(cfg, **{**zero, key: 2.0}), eps)(pnl, decisions)
        assert only.item() == pytest.approx(2.0 * manual[name].item(), rel=1e-12)


def test_loss_type_switches_the_objective():
    gen = torch.Generator().manual_seed(2)
    pnl = 0.01 * torch.randn(4, 12, generator=gen, dtype=torch.float64) + 0.002
    decisions = torch.tanh(torch.randn(4, 12, generator=gen, dtype=torch.float64))
    sh, so = sharpe_ratio(pnl, 1e-8).item(), sortino_ratio(pnl, 1e-8).item()
    assert sh != pytest.approx(so, rel=1e-3)

    def loss(**kw):
        return Objective(LossConfig(**kw), 1e-6)(pnl, decisions)[0].item()

    assert loss(type="sharpe") == pytest.approx(-sh, rel=1e-12)
    assert loss(type="sortino") == pytest.approx(-so, rel=1e-12)
    hybrid_core = {
        "lambda_turnover": 0.0,
        "lambda_drawdown": 0.0,
        "lambda_terminal": 0.0,
        "lambda_flat": 0.0,
        "lambda_bias": 0.0,
    }
    assert loss(type="hybrid", core="sortino", **hybrid_core) == pytest.approx(-so, rel=1e-12)
    assert loss(type="hybrid", core="sharpe", **hybrid_core) == pytest.approx(-sh, rel=1e-12)
    assert loss(type="hybrid") != pytest.approx(-sh, rel=1e-3)  # the regularisers count by default
    # the sharpe loss ignores the hybrid's lambdas (upstream's itransformer_sharpe set them to no effect)
    assert loss(type="sharpe", lambda_bias=5.0) == loss(type="sharpe")


def test_regularisers_hand_worked():
    d = t64([[0.0, 0.5, 0.5, -0.5]])
    assert turnover(d, 1e-20).item() == pytest.approx((0.5 + 0.0 + 1.0) / 3, abs=1e-9)  # entry from flat not counted
    assert terminal(d, 1e-20).item() == pytest.approx(0.5, abs=1e-9)
    # |0| < 0.05 counts ~1, |0.5| counts ~0: one flat decision in four
    assert flat_share(d, 0.05, 40.0).item() == pytest.approx(0.25, abs=0.04)


DRAWDOWN_CORE = {"lambda_band": 1.0, "band_low": 0.3, "band_high": 0.6, "cdar_alpha": 0.8}


@pytest.mark.parametrize(
    ("core", "extra"), [("sharpe", {}), ("sortino", {}), ("calmar", DRAWDOWN_CORE), ("cdar", DRAWDOWN_CORE)]
)
def test_hybrid_gradient_through_the_simulator_matches_finite_differences(core, extra):
    sim = SimConfig(smooth_abs_eps=1e-4, impact_eta=0.02, execution_lag_bars=1)
    objective = Objective(LossConfig(type="hybrid", core=core, eps=1e-8, **extra), sim.smooth_abs_eps)
    gen = torch.Generator().manual_seed(3)
    decisions = (0.8 * torch.tanh(torch.randn(3, 8, generator=gen, dtype=torch.float64))).requires_grad_()
    returns = 0.01 * torch.randn(3, 8, generator=gen, dtype=torch.float64)
    funding = 1e-4 * torch.randn(3, 8, generator=gen, dtype=torch.float64)

    def loss(d):
        pnl = simulate(held_positions(d, sim.execution_lag_bars), returns, funding, sim).net
        return objective(pnl, d)[0]

    assert torch.autograd.gradcheck(loss, (decisions,), eps=1e-6, atol=1e-7, rtol=1e-5)
