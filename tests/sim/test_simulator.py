"""The simulator against hand-worked bars, its financial properties, and its gradient against finite differences."""

from __future__ import annotations

import pytest
import torch

from diffquant.config import SimConfig
from diffquant.sim.simulator import bar_returns, held_positions, simulate, smooth_abs

# commission + slippage = 0.0015 per unit traded; eps tiny: the smooth cost is within 1.5e-13 of the exact one here
SIM = SimConfig(commission=0.001, slippage=0.0005, smooth_abs_eps=1e-20, impact_eta=0.0, funding=True)
DECISIONS = [[0.5, -0.25, -0.25, 1.0]]
RETURNS = [[0.01, -0.02, 0.03, 0.005]]
FUNDING = [[0.0, 0.0001, 0.0, -0.0002]]

# Worked by hand for lag L: held = L zeros then the decisions; trade = held - previous held (flat before bar 0);
# gross = held * r; commission = 0.0015 * |trade|; funding = held * f; net = gross - commission - funding.
HAND = {
    0: {
        "held": [0.5, -0.25, -0.25, 1.0],
        "trades": [0.5, -0.75, 0.0, 1.25],
        "gross": [0.005, 0.005, -0.0075, 0.005],
        "commission": [0.00075, 0.001125, 0.0, 0.001875],
        "funding": [0.0, -0.000025, 0.0, -0.0002],  # the short receives +1e-4, the long receives the -2e-4 rate
        "net": [0.00425, 0.0039, -0.0075, 0.003325],
    },
    1: {
        "held": [0.0, 0.5, -0.25, -0.25],
        "trades": [0.0, 0.5, -0.75, 0.0],
        "gross": [0.0, -0.01, -0.0075, -0.00125],
        "commission": [0.0, 0.00075, 0.001125, 0.0],
        "funding": [0.0, 0.00005, 0.0, 0.00005],
        "net": [0.0, -0.0108, -0.008625, -0.0013],
    },
    2: {
        "held": [0.0, 0.0, 0.5, -0.25],
        "trades": [0.0, 0.0, 0.5, -0.75],
        "gross": [0.0, 0.0, 0.015, -0.00125],
        "commission": [0.0, 0.0, 0.00075, 0.001125],
        "funding": [0.0, 0.0, 0.0, 0.00005],
        "net": [0.0, 0.0, 0.01425, -0.002425],
    },
}


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


@pytest.mark.parametrize("lag", [0, 1, 2])
@pytest.mark.parametrize("exact", [True, False])
def test_hand_worked_bars(lag, exact):
    held = held_positions(t64(DECISIONS), lag)
    res = simulate(held, t64(RETURNS), t64(FUNDING), SIM, exact=exact)
    want = HAND[lag]
    torch.testing.assert_close(held, t64([want["held"]]), rtol=0, atol=0)
    for name in ("trades", "gross", "commission", "funding", "net"):
        torch.testing.assert_close(getattr(res, name), t64([want[name]]), rtol=0, atol=1e-12, msg=name)


def test_bar_returns_and_previous_position():
    torch.testing.assert_close(bar_returns(t64([[100.0, 101.0, 99.99]])), t64([[0.01, -0.01]]))
    # already long 0.5 before the first bar: holding 0.5 costs nothing, then selling to -0.25 trades 0.75
    res = simulate(t64([[0.5, -0.25]]), t64([[0.0, 0.0]]), None, SIM, prev_position=t64([0.5]), exact=True)
    torch.testing.assert_close(res.trades, t64([[0.0, -0.75]]))
    torch.testing.assert_close(res.commission, t64([[0.0, 0.001125]]))


def test_impact_term_is_eta_times_trade_squared():
    cfg = SimConfig(commission=0.001, slippage=0.0005, smooth_abs_eps=1e-20, impact_eta=0.1)
    res = simulate(t64(DECISIONS), t64(RETURNS), t64(FUNDING), cfg, exact=True)
    # 0.0015 |trade| + 0.1 trade^2 with trades 0.5, -0.75, 0, 1.25
    want = t64([[0.00075 + 0.025, 0.001125 + 0.05625, 0.0, 0.001875 + 0.15625]])
    torch.testing.assert_close(res.commission, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(res.net, res.gross - want - res.funding, rtol=0, atol=1e-15)


def test_funding_sign_long_pays_short_receives():
    held = t64([[1.0, 1.0], [-1.0, -1.0]])
    rate = t64([[0.0001, -0.0003]] * 2)
    res = simulate(held, torch.zeros_like(held), rate, SIM, prev_position=t64([1.0, -1.0]))
    torch.testing.assert_close(res.funding, t64([[0.0001, -0.0003], [-0.0001, 0.0003]]))
    torch.testing.assert_close(res.net, t64([[-0.0001, 0.0003], [0.0001, -0.0003]]))
    off = simulate(held, torch.zeros_like(held), rate, SimConfig(funding=False), prev_position=t64([1.0, -1.0]))
    assert torch.equal(off.net, torch.zeros_like(held))


@pytest.mark.parametrize("eps", [1e-6, 2e-8, 3e-6, 1e-4])  # 2e-8 and 3e-6 left float32 residues before the fix
def test_flat_book_earns_exactly_zero(eps):
    """No idle cost: upstream charged sqrt(eps) * rate = 7e-7 per flat bar (docs/upstream.md,
    "Defects fixed" item 1)."""
    gen = torch.Generator().manual_seed(0)
    returns = 0.01 * torch.randn(8, 24, generator=gen)
    funding = 1e-4 * torch.randn(8, 24, generator=gen)
    res = simulate(torch.zeros(8, 24), returns, funding, SimConfig(smooth_abs_eps=eps))
    assert torch.equal(res.net, torch.zeros(8, 24))
    assert torch.equal(res.commission, torch.zeros(8, 24))
    # holding a constant position after entering it costs nothing either
    held = torch.full((8, 24), 0.3)
    res = simulate(held, returns, None, SimConfig(smooth_abs_eps=eps), prev_position=torch.full((8,), 0.3))
    assert torch.equal(res.commission, torch.zeros(8, 24))
    torch.testing.assert_close(res.net, 0.3 * returns, rtol=0, atol=0)


@pytest.mark.parametrize("eps", [1e-6, 2e-8, 3e-6, 1e-10])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_commission_never_negative(eps, dtype):
    gen = torch.Generator().manual_seed(1)
    held = torch.tanh(torch.randn(16, 50, generator=gen, dtype=dtype))
    held[:, 10:20] = held[:, 9:10]  # idle stretches
    held[:, 30:40] += 1e-7 * torch.randn(16, 10, generator=gen, dtype=dtype)  # tiny trades
    for exact in (False, True):
        res = simulate(held, torch.zeros_like(held), None, SimConfig(smooth_abs_eps=eps), exact=exact)
        assert (res.commission >= 0).all()
        assert (res.commission[:, 11:20] == 0).all()


def test_smooth_cost_close_to_exact_for_large_trades():
    cfg = SimConfig()  # eps 1e-6: smooth |x| = |x| - sqrt(eps) + O(eps / |x|) far from 0
    gen = torch.Generator().manual_seed(2)
    held = torch.rand(32, 24, generator=gen, dtype=torch.float64) * 2 - 1
    smooth = simulate(held, torch.zeros_like(held), None, cfg)
    exact = simulate(held, torch.zeros_like(held), None, cfg, exact=True)
    large = smooth.trades.abs() >= 0.05
    assert large.float().mean() > 0.8
    gap = (exact.commission - smooth.commission)[large]
    assert (gap >= 0).all() and (gap <= cfg.smooth_abs_eps**0.5 * cfg.cost_rate).all()
    rel = gap / exact.commission[large]
    assert rel.max() < 0.021  # 1e-3 / 0.05


def test_negated_returns_and_positions_give_the_same_pnl():
    gen = torch.Generator().manual_seed(3)
    held = torch.tanh(torch.randn(4, 24, generator=gen, dtype=torch.float64))
    returns = 0.01 * torch.randn(4, 24, generator=gen, dtype=torch.float64)
    funding = 1e-4 * torch.randn(4, 24, generator=gen, dtype=torch.float64)
    a = simulate(held, returns, funding, SimConfig(impact_eta=0.01))
    b = simulate(-held, -returns, -funding, SimConfig(impact_eta=0.01))
    torch.testing.assert_close(a.net, b.net, rtol=0, atol=0)


def test_smooth_abs_is_zero_at_zero_and_smooth():
    x = torch.tensor([0.0, 1e-3, -1e-3, 1.0], dtype=torch.float64, requires_grad=True)
    y = smooth_abs(x, 1e-6)
    assert y[0].item() == 0.0 and y[1].item() == y[2].item() > 0
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g[0].item() == 0.0 and abs(g[3].item() - 1.0) < 1e-6


@pytest.mark.parametrize("lag", [0, 1, 2])
def test_net_gradient_matches_finite_differences(lag):
    cfg = SimConfig(smooth_abs_eps=1e-4, impact_eta=0.05, execution_lag_bars=lag)
    gen = torch.Generator().manual_seed(4)
    decisions = torch.tanh(torch.randn(2, 6, generator=gen, dtype=torch.float64)).requires_grad_()
    prev = torch.tensor([0.2, -0.1], dtype=torch.float64, requires_grad=True)
    returns = 0.01 * torch.randn(2, 6, generator=gen, dtype=torch.float64)
    funding = 1e-4 * torch.randn(2, 6, generator=gen, dtype=torch.float64)

    def net(d, p):
        return simulate(held_positions(d, lag), returns, funding, cfg, prev_position=p).net

    assert torch.autograd.gradcheck(net, (decisions, prev), eps=1e-6, atol=1e-8, rtol=1e-5)
