"""Episodes as tensors and their mirror images; the mirror term rewards the sign-equivariant policy
(docs/upstream.md, "Defects fixed" item 2)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from diffquant.config import Config, SimConfig
from diffquant.data.contracts import to_ms
from diffquant.data.features import mirror_spec
from diffquant.data.splits import Series, make_splits
from diffquant.evaluate.walk_forward import policy_decisions, walk_forward
from diffquant.model.policy import PolicyNetwork
from diffquant.sim.losses import Objective
from diffquant.sim.simulator import bar_returns, held_positions, simulate
from diffquant.train.episodes import (
    EpisodeBatch,
    batch_loss,
    context_volatility,
    episode_pnl,
    episodes_from_arrays,
    mirror,
)
from tests.data.real_data import fixture_features_30m  # noqa: F401  (registers the fixture)

CFG = Config()
CTX, H, LAG = CFG.window.context, CFG.window.horizon, CFG.sim.execution_lag_bars


@pytest.fixture(scope="module")
def real(features_30m):
    """The 907 real 30-minute training episodes of the shipped data (default split), as the train stage sees them."""
    samples, _, _ = make_splits(features_30m, CFG.split, CFG.window, LAG, CFG.data.timeframe_minutes)
    batch = episodes_from_arrays(samples.features, samples.close, samples.funding, CTX)
    perm, sign = (torch.as_tensor(a) for a in mirror_spec(samples.feature_names))
    return samples, batch, perm, sign


def test_episodes_from_arrays_hand_worked():
    close = np.array([[100.0, 101.0, 102.01, 100.99]])
    funding = np.array([[9.0, 9.0, 1e-4, -2e-4]])
    ep = episodes_from_arrays(np.zeros((1, 4, 2), np.float32), close, funding, context=2)
    # scored bars 2, 3: r_2 = c_2 / c_1 - 1, r_3 = c_3 / c_2 - 1; their funding
    torch.testing.assert_close(ep.returns, torch.tensor([[0.01, 100.99 / 102.01 - 1]]))
    torch.testing.assert_close(ep.funding, torch.tensor([[1e-4, -2e-4]]))
    assert ep.features.dtype == ep.returns.dtype == torch.float32 and len(ep) == 1


def test_context_volatility_hand_worked_and_causal():
    # context 3: log returns log(1.1) and log(0.9) between bars 0..2; population std = half their distance
    close = np.array([[100.0, 110.0, 99.0, 120.0, 80.0]])
    assert context_volatility(close, 3)[0] == pytest.approx((math.log(1.1) - math.log(0.9)) / 2, rel=1e-12)
    gen = np.random.default_rng(0)
    close = 100.0 * np.exp(np.cumsum(0.01 * gen.standard_normal((5, CTX + H)), axis=1))
    before = episodes_from_arrays(np.zeros((5, CTX + H, 2), np.float32), close, np.zeros_like(close), CTX)
    later = close.copy()
    later[:, CTX:] *= np.exp(0.05 * gen.standard_normal((5, H)))  # every scored bar changes ...
    after = episodes_from_arrays(np.zeros((5, CTX + H, 2), np.float32), later, np.zeros_like(close), CTX)
    assert not torch.equal(after.returns, before.returns)
    assert torch.equal(after.context_vol, before.context_vol)  # ... and the regime does not
    known = close.copy()
    known[:, CTX - 1] *= 1.01  # the first decision's own close is known to it, and counts
    assert (context_volatility(known, CTX) != context_volatility(close, CTX)).all()
    # the mirrored market (prices reflected in log) has the same regime
    np.testing.assert_allclose(context_volatility(1.0 / close, CTX), context_volatility(close, CTX), rtol=1e-12)


def test_mirror_twice_is_identity_and_log_returns_negate(real):
    samples, batch, perm, sign = real
    twice = mirror(mirror(batch, perm, sign), perm, sign)
    assert torch.equal(twice.features, batch.features)
    assert torch.equal(twice.funding, batch.funding)
    torch.testing.assert_close(twice.returns, batch.returns, rtol=0, atol=1e-7)
    once = mirror(batch, perm, sign)
    torch.testing.assert_close(torch.log1p(once.returns), -torch.log1p(batch.returns), rtol=1e-5, atol=1e-9)
    assert torch.equal(once.funding, -batch.funding)
    names = samples.feature_names
    assert names == ["open", "high", "low", "close", "volume", "rolling_vol"]
    f, m = batch.features, once.features
    assert torch.equal(m[..., 3], -f[..., 3]) and torch.equal(m[..., 0], -f[..., 0])
    assert torch.equal(m[..., 1], -f[..., 2]) and torch.equal(m[..., 2], -f[..., 1])  # high <-> low
    assert torch.equal(m[..., 4:], f[..., 4:])


class AnnouncedOracle:
    """A stand-in policy that reads the last feature channel, which announces the return its decision will earn.

    It is sign-equivariant: on mirrored inputs (the channel negated) it returns minus its position.
    """

    def rollout(self, features, horizon, full_bptt):
        decisions = 0.5 * torch.sign(features[:, CTX - 1 : CTX - 1 + horizon, -1])
        return decisions, torch.ones_like(decisions)


def oracle_decisions(returns: torch.Tensor) -> torch.Tensor:
    """Decision t is held during bar t + LAG: go 0.5 long/short on the sign of that bar's return (0 past the end)."""
    d = torch.zeros_like(returns)
    d[:, : H - LAG] = 0.5 * torch.sign(returns[:, LAG:])
    return d


def test_mirror_term_rewards_the_equivariant_oracle(real):
    """Real episodes; an oracle that knows the return each decision earns.

    equivariant oracle: on mirrored inputs it returns minus its position (the correct policy in a reflected market);
    invariant oracle: it returns the same position. Our mirrored loss scores positions as they are on
    ``episodes.mirror``: the equivariant oracle gets the same good loss as on the original, the invariant one a bad
    loss. Upstream's construction (reflected closes 2 c0 - c, positions negated) does the opposite.
    """
    samples, batch, perm, sign = real
    sim = CFG.sim
    objective = Objective(CFG.loss, sim.smooth_abs_eps)

    def loss(decisions, returns, funding):
        pnl = simulate(held_positions(decisions, LAG), returns, funding, sim).net
        return objective(pnl, decisions)[0].item()

    d = oracle_decisions(batch.returns)
    original = loss(d, batch.returns, batch.funding)
    mirrored = mirror(batch, perm, sign)
    assert torch.equal(oracle_decisions(mirrored.returns), -d)  # the oracle itself is equivariant

    ours_equivariant = loss(-d, mirrored.returns, mirrored.funding)
    ours_invariant = loss(d, mirrored.returns, mirrored.funding)

    # upstream: closes reflected about the last context close, the mirrored positions negated before scoring
    closes = torch.as_tensor(samples.close[:, CTX - 1 :])
    reflected = bar_returns(2 * closes[:, :1] - closes).float()
    upstream_equivariant = loss(d, reflected, None)  # -(mirrored output) = -(-d)
    upstream_invariant = loss(-d, reflected, None)  # -(mirrored output) = -d

    assert original < -0.3
    assert ours_equivariant == pytest.approx(original, rel=0.02)
    assert ours_invariant > 0.3
    assert upstream_equivariant > 0.3  # upstream punishes the correct policy ...
    assert upstream_invariant < -0.3  # ... and rewards the sign-invariant one

    # the same through batch_loss, with a policy that must read its inputs: the mirrored half costs nothing
    announce = torch.zeros(len(batch), CTX + H, 1)
    announce[:, CTX - 1 : CTX - 1 + H - LAG, 0] = batch.returns[:, LAG:]
    with_channel = EpisodeBatch(
        torch.cat([batch.features, announce], -1), batch.returns, batch.funding, batch.context_vol
    )
    perm_x, sign_x = torch.cat([perm, torch.tensor([perm.numel()])]), torch.cat([sign, torch.tensor([-1.0])])
    plain, _, _ = batch_loss(AnnouncedOracle(), with_channel, objective, sim, H, True)
    both, _, _ = batch_loss(
        AnnouncedOracle(), with_channel, objective, sim, H, True, mirror(with_channel, perm_x, sign_x)
    )
    assert plain.item() == pytest.approx(original, rel=1e-6)
    assert both.item() == pytest.approx(0.5 * (original + ours_equivariant), rel=1e-6)


@pytest.mark.parametrize("regime_power", [0.0, 1.0])
def test_batch_loss_mirror_is_the_mean_of_both_halves(regime_power):
    """Also with the regime weighting on: each half is weighted by its own episodes' context volatility."""
    gen = torch.Generator().manual_seed(0)
    b, ctx, h = 4, 8, 6
    batch = EpisodeBatch(
        torch.randn(b, ctx + h, 2, generator=gen),
        0.01 * torch.randn(b, h, generator=gen),
        1e-4 * torch.randn(b, h, generator=gen),
        0.01 * torch.rand(b, generator=gen),
    )
    other = EpisodeBatch(
        torch.randn(b, ctx + h, 2, generator=gen),
        0.01 * torch.randn(b, h, generator=gen),
        1e-4 * torch.randn(b, h, generator=gen),
        0.01 * torch.rand(b, generator=gen),
    )

    class Echo:  # position = tanh of channel 0 at the decision bar
        def rollout(self, features, horizon, full_bptt):
            d = torch.tanh(features[:, ctx - 1 : ctx - 1 + horizon, 0])
            return d, d

    loss_cfg = dataclasses.replace(CFG.loss, regime_power=regime_power)
    sim, objective = SimConfig(), Objective(loss_cfg, 1e-6)
    la, _, pnl_a = batch_loss(Echo(), batch, objective, sim, h, True)
    lb, _, _ = batch_loss(Echo(), other, objective, sim, h, True)
    both, _, pnl = batch_loss(Echo(), batch, objective, sim, h, True, other)
    assert both.item() == pytest.approx(0.5 * (la.item() + lb.item()), rel=1e-6)
    assert torch.equal(pnl, pnl_a) and pnl.shape == (b, h)  # the logged PnL is the original half's
    calmer = dataclasses.replace(batch, context_vol=batch.context_vol.flip(0))  # the same bars, other regimes
    moved = batch_loss(Echo(), calmer, objective, sim, h, True)[0].item() != la.item()
    assert moved == bool(regime_power)


@pytest.mark.parametrize("lag", [0, 1, 2])
def test_an_episode_cut_from_a_series_earns_the_same_per_bar_pnl_on_both_paths(features_30m, lag):
    """Training (episode rollout, held_positions, episode returns) and walk-forward (decision scan, the quarter's
    held positions and returns) share one timing map and one return definition: on the same real bars, with the
    walk-forward book flat before the episode's first decision, every bar's decision and net PnL agree."""
    sim = dataclasses.replace(SimConfig(), execution_lag_bars=lag, smooth_abs_eps=1e-14)  # |x| to ~1e-7
    bars = features_30m.iloc[5_000 : 5_000 + CTX + H]
    names = [c.removeprefix("x_") for c in bars.columns if c.startswith("x_")]
    features = bars[[f"x_{n}" for n in names]].to_numpy(np.float32)
    close, funding = bars["close"].to_numpy(), bars["funding_rate"].to_numpy()
    open_time = to_ms(bars["open_time"])
    assert (np.diff(open_time) == 30 * 60_000).all()  # no gap: a valid training sample
    torch.manual_seed(0)
    model = PolicyNetwork(CFG.model, len(names), CTX).eval()

    episode = episodes_from_arrays(features[None], close[None], funding[None], CTX)
    with torch.no_grad():
        decided, pnl = episode_pnl(model, episode, sim, H, full_bptt=True)

    series = Series(features, close, funding, open_time, CTX, 30 * 60_000, names)
    raw = policy_decisions(model, series).raw  # decisions at bars CTX-1 .. ; NaN before
    np.testing.assert_allclose(raw[CTX - 1 : -1], decided[0].double().numpy(), rtol=0, atol=1e-5)
    executed = np.zeros(len(close))  # the episode's book is flat before its first decision
    executed[CTX - 1 : -1] = decided[0].double().numpy()  # the same decisions: the paths differ only in timing
    record = walk_forward(series, executed, sim).record
    assert len(record) == H
    np.testing.assert_allclose(record["net"].to_numpy(), pnl[0].double().numpy(), rtol=1e-5, atol=1e-8)
    assert np.abs(record["net"].to_numpy()).max() > 1e-4  # the comparison is not vacuous
