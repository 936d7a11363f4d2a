"""The simulator and the losses on a portfolio (B, T, A): one asset is the single-asset path bit for bit, assets are
priced independently at their own cost rates, a hand-worked book, the leverage check, and finite differences."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from diffquant.config import LossConfig, SimConfig
from diffquant.sim.losses import Objective, flat_share, net_exposure, terminal, turnover
from diffquant.sim.simulator import bar_returns, gross_exposure, held_positions, simulate
from tests.sim.test_simulator import DECISIONS, FUNDING, HAND, RETURNS, SIM, t64

FIELDS = ("gross", "commission", "funding", "net", "trades")


def random_book(b: int, t: int, a: int, seed: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    held = torch.tanh(torch.randn(b, t, a, generator=gen, dtype=torch.float64)) / a
    returns = 0.01 * torch.randn(b, t, a, generator=gen, dtype=torch.float64)
    funding = 1e-4 * torch.randn(b, t, a, generator=gen, dtype=torch.float64)
    prev = torch.tanh(torch.randn(b, a, generator=gen, dtype=torch.float64)) / a
    return tuple(x.to(dtype) for x in (held, returns, funding, prev))


@pytest.mark.parametrize("lag", [0, 1, 2])
@pytest.mark.parametrize("exact", [True, False])
def test_one_asset_book_reproduces_the_hand_worked_bars(lag, exact):
    held = held_positions(t64(DECISIONS)[..., None], lag, time_axis=1)  # (1, 4, 1)
    res = simulate(held, t64(RETURNS)[..., None], t64(FUNDING)[..., None], SIM, exact=exact)
    for name in FIELDS:
        torch.testing.assert_close(getattr(res, name)[..., 0], t64([HAND[lag][name]]), rtol=0, atol=1e-12, msg=name)
    torch.testing.assert_close(res.book_net, t64([HAND[lag]["net"]]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("eta", [0.0, 0.05])
@pytest.mark.parametrize("lag", [0, 1])
def test_one_asset_book_is_the_single_asset_simulator_bit_for_bit(dtype, exact, eta, lag):
    decisions, returns, funding, prev = random_book(4, 12, 1, seed=0, dtype=dtype)
    cfg = SimConfig(impact_eta=eta)
    one = simulate(
        held_positions(decisions[..., 0], lag),
        returns[..., 0],
        funding[..., 0],
        cfg,
        prev_position=prev[:, 0],
        exact=exact,
    )
    book = simulate(
        held_positions(decisions, lag, time_axis=1),
        returns,
        funding,
        cfg,
        prev_position=prev,
        exact=exact,
        cost_rate=torch.tensor([cfg.cost_rate], dtype=dtype),
        leverage=1.0,
    )
    for name in FIELDS:
        assert torch.equal(getattr(book, name)[..., 0], getattr(one, name)), name
    assert torch.equal(book.book_net, one.net) and torch.equal(one.book_net, one.net)


def test_assets_are_priced_independently_at_their_own_cost_rates():
    held, returns, funding, prev = random_book(3, 10, 3, seed=1)
    cfgs = [SimConfig(commission=c, slippage=0.0002, impact_eta=0.01) for c in (0.0002, 0.0004, 0.001)]
    rates = torch.tensor([c.cost_rate for c in cfgs], dtype=torch.float64)
    book = simulate(held, returns, funding, cfgs[0], prev_position=prev, cost_rate=rates)
    for i, cfg in enumerate(cfgs):
        one = simulate(held[..., i], returns[..., i], funding[..., i], cfg, prev_position=prev[:, i])
        for name in FIELDS:
            assert torch.equal(getattr(book, name)[..., i], getattr(one, name)), (name, i)
    torch.testing.assert_close(book.book_net, book.net.sum(-1), rtol=0, atol=0)


def test_two_asset_book_hand_worked():
    # cost rates 0.001 and 0.002 per unit traded, flat before bar 0; per asset and bar:
    # trades [.5, -.3], [0, .5], [-.9, 0]; gross = w r; commission = rate |trade|; funding = w f;
    # book net = sum over the assets of gross - commission - funding
    held = t64([[[0.5, -0.3], [0.5, 0.2], [-0.4, 0.2]]])
    returns = t64([[[0.01, 0.02], [-0.02, 0.01], [0.03, -0.01]]])
    funding = t64([[[0.0001, 0.0], [0.0, -0.0002], [0.0, 0.0003]]])
    cfg = SimConfig(smooth_abs_eps=1e-20)
    res = simulate(held, returns, funding, cfg, exact=True, cost_rate=t64([0.001, 0.002]), leverage=1.0)
    want = {
        "trades": [[0.5, -0.3], [0.0, 0.5], [-0.9, 0.0]],
        "gross": [[0.005, -0.006], [-0.01, 0.002], [-0.012, -0.002]],
        "commission": [[0.0005, 0.0006], [0.0, 0.001], [0.0009, 0.0]],
        "funding": [[0.00005, 0.0], [0.0, -0.00004], [0.0, 0.00006]],
        "net": [[0.00445, -0.0066], [-0.01, 0.00104], [-0.0129, -0.00206]],
    }
    for name, value in want.items():
        torch.testing.assert_close(getattr(res, name), t64([value]), rtol=0, atol=1e-15, msg=name)
    torch.testing.assert_close(res.book_net, t64([[-0.00215, -0.00896, -0.01496]]), rtol=0, atol=1e-15)
    torch.testing.assert_close(gross_exposure(held), t64([[0.8, 0.7, 0.6]]), rtol=0, atol=1e-15)

    # the hybrid's regularisers on the same weights, read per bar over the book
    eps = 1e-20
    assert turnover(held, eps).item() == pytest.approx((0.5 + 0.9) / 2, abs=1e-9)  # sum_i |dw_i| per bar
    assert terminal(held, eps).item() == pytest.approx(0.6, abs=1e-9)  # gross exposure at the end
    assert net_exposure(held).item() == pytest.approx((0.2 + 0.7 - 0.2) / 3, rel=1e-12)  # |mean sum_i w_i|
    flat = torch.sigmoid(40.0 * (0.05 - t64([0.8, 0.7, 0.6]))).mean()
    assert flat_share(held, 0.05, 40.0).item() == pytest.approx(flat.item(), rel=1e-12)


def test_flat_book_earns_exactly_zero():
    _, returns, funding, _ = random_book(4, 16, 5, seed=2, dtype=torch.float32)
    res = simulate(torch.zeros_like(returns), returns, funding, SimConfig(), leverage=1.0)
    for name in FIELDS:
        assert torch.count_nonzero(getattr(res, name)) == 0, name


def test_leverage_check_refuses_an_overexposed_book_and_allows_rounding():
    held = t64([[[0.6, -0.5], [0.5, 0.5]]])  # gross exposure 1.1 at bar 0
    with pytest.raises(ValueError, match=r"gross exposure 1\.1 at episode 0, bar 0 exceeds the leverage 1\.0"):
        simulate(held, torch.zeros_like(held), None, SIM, leverage=1.0)
    simulate(held, torch.zeros_like(held), None, SIM, leverage=1.1)
    thirds = torch.full((1, 2, 3), 1 / 3, dtype=torch.float32)  # sums to 1 + 1 ulp in float32
    simulate(thirds, torch.zeros_like(thirds), None, SIM, leverage=1.0)


def test_returns_and_lag_along_the_time_axis_of_a_book():
    gen = torch.Generator().manual_seed(3)
    close = 100 * torch.exp(0.01 * torch.randn(2, 9, 3, generator=gen, dtype=torch.float64).cumsum(1))
    book = bar_returns(close, time_axis=1)
    assert book.shape == (2, 8, 3)
    assert np.array_equal(bar_returns(close.numpy(), time_axis=1), book.numpy())  # numpy arrays take the same axis
    decisions = torch.randn(2, 8, 3, generator=gen, dtype=torch.float64)
    for i in range(3):
        assert torch.equal(book[..., i], bar_returns(close[..., i]))
        for lag in (0, 1, 3):
            assert torch.equal(
                held_positions(decisions, lag, time_axis=1)[..., i], held_positions(decisions[..., i], lag)
            )


LOSSES = [
    LossConfig(type="sharpe"),
    LossConfig(type="sortino"),
    LossConfig(type="calmar"),
    LossConfig(type="cdar"),
    LossConfig(type="hybrid"),
    LossConfig(type="hybrid", core="sortino", lambda_band=0.3, band_low=0.01, band_high=0.05),
]


@pytest.mark.parametrize("cfg", LOSSES, ids=lambda c: f"{c.type}-{c.core}-{c.lambda_band}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_asset_loss_is_the_single_asset_loss_bit_for_bit(cfg, dtype):
    decisions, returns, funding, _ = random_book(8, 24, 1, seed=4, dtype=dtype)
    sim = SimConfig()
    objective = Objective(cfg, sim.smooth_abs_eps)
    out = []
    for d in (decisions[..., 0], decisions):
        d = d.clone().requires_grad_()
        res = simulate(
            held_positions(d, sim.execution_lag_bars, time_axis=1), returns.view_as(d), funding.view_as(d), sim
        )
        loss, terms = objective(res.book_net, d)
        (grad,) = torch.autograd.grad(loss, d)
        out.append((loss, terms, grad.view(8, 24)))
    (loss1, terms1, grad1), (loss_a, terms_a, grad_a) = out
    assert torch.equal(loss1, loss_a)
    assert all(torch.equal(terms1[k], terms_a[k]) for k in terms1)
    assert torch.equal(grad1, grad_a)


@pytest.mark.parametrize("lag", [0, 1])
def test_book_net_gradient_matches_finite_differences(lag):
    cfg = SimConfig(smooth_abs_eps=1e-4, impact_eta=0.05, execution_lag_bars=lag)
    decisions, returns, funding, prev = random_book(2, 6, 3, seed=5)
    rates = t64([0.0005, 0.001, 0.002])

    def book_net(d: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return simulate(
            held_positions(d, lag, time_axis=1), returns, funding, cfg, prev_position=p, cost_rate=rates
        ).book_net

    args = (decisions.requires_grad_(), prev.requires_grad_())
    assert torch.autograd.gradcheck(book_net, args, eps=1e-6, atol=1e-8, rtol=1e-5)


@pytest.mark.parametrize("core", ["sharpe", "sortino"])
def test_portfolio_loss_gradient_matches_finite_differences(core):
    sim = SimConfig(smooth_abs_eps=1e-4, impact_eta=0.01)
    objective = Objective(
        dataclasses.replace(LossConfig(), core=core, flat_k=5.0, lambda_band=0.2, band_high=0.05), sim.smooth_abs_eps
    )
    decisions, returns, funding, _ = random_book(3, 8, 4, seed=6)

    def loss(d: torch.Tensor) -> torch.Tensor:
        pnl = simulate(held_positions(d, sim.execution_lag_bars, time_axis=1), returns, funding, sim).book_net
        return objective(pnl, d)[0]

    assert torch.autograd.gradcheck(loss, (decisions.requires_grad_(),), eps=1e-6, atol=1e-7, rtol=1e-4)
