"""The execution layer's parts: the clock's decision bars, the no-trade band (exact, its gradient checked), the
volatility scale, neutral book weights, and the causal estimates they read."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from diffquant.config import Config, SimConfig, from_dict
from diffquant.errors import ConfigError
from diffquant.sim.execution import (
    Execution,
    band_path,
    band_path_numpy,
    book_weights,
    decision_mask,
    execute_decisions,
    hold_between,
    log_returns,
    market_betas,
    per_bar_target,
    risk_units,
    second_moment,
    trailing,
    vol_scale,
)

HOUR_MS = 3_600_000


def test_decision_bars_are_the_clock_s_multiples_of_the_period():
    """Hourly bars, period 8: the decisions are taken at the closes 00:00, 08:00 and 16:00 UTC (the funding stamps);
    the funding cadence gives that period on hourly bars and 2 on 4-hour bars."""
    open_time = 1_735_689_600_000 + HOUR_MS * np.arange(48)  # 2025-01-01 00:00 UTC onwards
    decide = decision_mask(open_time, HOUR_MS, 8)
    closes_h = ((open_time[decide] + HOUR_MS) // HOUR_MS) % 24
    assert sorted(set(closes_h.tolist())) == [0, 8, 16] and decide.sum() == 6
    assert decision_mask(open_time, HOUR_MS, 1).all()
    funding = SimConfig(rebalance_at="funding")
    assert funding.decision_period(60) == 8 and funding.decision_period(240) == 2
    with pytest.raises(ConfigError, match="funding interval"):
        funding.decision_period(300)
    values = np.arange(10.0)
    held = hold_between(values, np.array([0, 0, 1, 0, 0, 1, 0, 0, 0, 1], dtype=bool))
    np.testing.assert_array_equal(held, [np.nan, np.nan, 2, 2, 2, 5, 5, 5, 5, 9])


def _random_path(book: bool, seed: int) -> tuple[torch.Tensor, float]:
    """Targets that wander (a random walk, so some changes fall inside the band and some outside) and a width."""
    gen = torch.Generator().manual_seed(seed)
    shape = (3, 12, 4) if book else (3, 12)
    return (0.08 * torch.randn(*shape, generator=gen, dtype=torch.float64)).cumsum(1), 0.15


@pytest.mark.parametrize("book", [False, True])
def test_the_band_trades_nothing_inside_it_and_exactly_the_excess_outside(book):
    targets, width = _random_path(book, 0)
    held = band_path(targets, width, book)
    prev = torch.cat([torch.zeros_like(held[:, :1]), held[:, :-1]], 1)
    size = (lambda x: x.abs().sum(-1)) if book else torch.abs
    wanted, traded = size(targets - prev), size(held - prev)
    inside = wanted <= width
    assert inside.any() and (~inside).any()  # both cases occur
    assert (traded[inside] == 0).all()  # no trade inside the band, exactly
    torch.testing.assert_close(traded[~inside], wanted[~inside] - width, rtol=0, atol=1e-12)  # the excess
    # and towards the target: what is traded is a part of the wanted change, never more, never another direction
    part = (held - prev) / torch.where(targets - prev == 0, 1.0, targets - prev)
    assert ((part >= -1e-12) & (part <= 1 + 1e-12)).all()
    np.testing.assert_allclose(band_path_numpy(targets[0].numpy(), width), held[0].numpy(), rtol=0, atol=1e-15)


@pytest.mark.parametrize("book", [False, True])
def test_the_band_s_gradient_is_checked_in_float64(book):
    """torch.autograd.gradcheck against finite differences, with respect to the targets and the width (the learned
    band's), at random points (off the band's edge with probability one)."""
    targets, _ = _random_path(book, 1)
    targets = targets[:2, :8].clone().requires_grad_(True)
    width = torch.tensor(0.12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: band_path(x, w, book), (targets, width), eps=1e-7, atol=1e-8)


def test_a_neutral_book_in_the_band_stays_neutral_and_within_its_cap():
    gen = torch.Generator().manual_seed(2)
    raw = torch.rand(2, 20, 5, generator=gen, dtype=torch.float64) * 2 - 1
    targets = book_weights(raw, 1.0, "dollar")
    held = band_path(targets, 0.2, book=True)
    assert held.sum(-1).abs().max() < 1e-12 and (held.abs().sum(-1) <= 1.0 + 1e-12).all()


def test_book_weights_dollar_and_beta_neutral_with_absent_assets():
    gen = torch.Generator().manual_seed(3)
    raw = torch.rand(6, 4, generator=gen, dtype=torch.float64) * 2 - 1
    present = torch.tensor([True, True, False, True]).expand(6, 4)
    beta = torch.rand(6, 4, generator=gen, dtype=torch.float64) + 0.5
    dollar = book_weights(raw, 0.8, "dollar", present)
    assert dollar.sum(-1).abs().max() < 1e-15 and (dollar[:, 2] == 0).all()
    assert (dollar.abs().sum(-1) <= 0.8 + 1e-15).all()
    hedged = book_weights(raw, 0.8, "beta", present, beta)
    assert ((hedged * beta).sum(-1).abs().max() < 1e-15) and (hedged[:, 2] == 0).all()
    assert (hedged.abs().sum(-1) <= 0.8 + 1e-15).all()
    # a neutral book is left as it is (a projection), and "none" is the cap alone
    torch.testing.assert_close(book_weights(dollar, 0.8, "dollar", present), dollar, rtol=0, atol=1e-15)
    torch.testing.assert_close(book_weights(raw, 0.8, "none"), book_weights(raw, 0.8, "none", None), rtol=0, atol=0)


def test_the_volatility_scale_brings_a_full_position_to_the_target():
    """One asset: scale = min(cap, target / sigma), whatever the position; a book: its full-gross direction has the
    target's volatility (u' M u for u = w / sum |w|)."""
    rng = np.random.default_rng(4)
    logs = rng.normal(0, 0.01, (300, 3))
    rows = np.arange(40, 300, 20)
    one = second_moment(trailing(logs[:, 0], rows, 24))
    np.testing.assert_allclose(one, [np.mean(logs[r - 23 : r + 1, 0] ** 2) for r in rows], rtol=1e-14)
    annual, tf = 0.5, 60
    target = per_bar_target(annual, tf)
    assert target == pytest.approx(0.5 / np.sqrt(365 * 24))
    risk = torch.from_numpy(risk_units(one, annual, tf))
    for position in (0.3, -1.0):
        scale = vol_scale(torch.full((len(rows),), position, dtype=torch.float64), risk, 2.0)
        np.testing.assert_allclose(scale.numpy(), np.minimum(2.0, target / np.sqrt(one)), rtol=1e-12)
    book = second_moment(trailing(logs, rows, 24))  # (K, 3, 3)
    w = torch.from_numpy(rng.normal(0, 0.3, (len(rows), 3)))
    scale = vol_scale(w, torch.from_numpy(risk_units(book, annual, tf)), 50.0).numpy()
    u = w.numpy() / np.abs(w.numpy()).sum(1, keepdims=True)
    sigma = np.sqrt([np.mean((logs[r - 23 : r + 1] @ u[k]) ** 2) for k, r in enumerate(rows)])
    np.testing.assert_allclose(scale, target / sigma, rtol=1e-12)
    flat = vol_scale(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, 3, dtype=torch.float64), 2.0)
    assert (flat == 2.0).all()  # a flat window or book: the cap, finite
    x = w[:3].clone().requires_grad_(True)
    r = torch.from_numpy(risk_units(book[:3], annual, tf))
    assert torch.autograd.gradcheck(lambda v: v * vol_scale(v, r, 50.0).unsqueeze(-1), (x,), eps=1e-7, atol=1e-7)


def test_the_estimates_at_a_bar_read_nothing_after_it():
    """Causality: the volatility's second moments and the betas at row k are bit-identical when every value after
    row k changes (each window is computed on its own, not from running sums)."""
    rng = np.random.default_rng(5)
    logs = rng.normal(0, 0.01, (200, 4))
    have = rng.random((200, 4)) > 0.1
    rows = np.arange(30, 200)
    before_m = second_moment(trailing(logs, rows, 30))
    before_b = market_betas(trailing(logs, rows, 30), trailing(have, rows, 30))
    for k in (60, 120):
        changed, changed_have = logs.copy(), have.copy()
        changed[k + 1 :] = rng.normal(0, 0.05, changed[k + 1 :].shape)
        changed_have[k + 1 :] = ~changed_have[k + 1 :]
        after_m = second_moment(trailing(changed, rows, 30))
        after_b = market_betas(trailing(changed, rows, 30), trailing(changed_have, rows, 30))
        upto = rows <= k
        assert np.array_equal(after_m[upto], before_m[upto]) and np.array_equal(after_b[upto], before_b[upto])
        assert not np.array_equal(after_m[~upto], before_m[~upto])  # the change is seen later
    with pytest.raises(ValueError, match="needs 30 returns"):
        trailing(logs, np.array([29]), 30)


def test_betas_by_hand():
    """Two assets, one moving twice the other: the equal-weight market moves 1.5 times the first, so the betas are
    2/3 and 4/3."""
    base = np.array([0.01, -0.02, 0.015, 0.005])
    windows = np.stack([base, 2 * base], axis=1)[None]  # (1, W, 2)
    np.testing.assert_allclose(market_betas(windows, np.ones_like(windows, dtype=bool)), [[2 / 3, 4 / 3]], rtol=1e-14)


def test_log_returns_are_zero_at_the_start_and_across_gaps():
    close = np.array([100.0, 101.0, 99.0, 99.5])
    out = log_returns(close, np.array([False, False, True, False]))
    np.testing.assert_allclose(out, [0.0, np.log(1.01), 0.0, np.log1p(99.5 / 99.0 - 1)], rtol=1e-15)


def test_execute_decisions_with_every_default_is_the_identity_and_holds_at_a_cadence():
    decisions = torch.randn(2, 5, dtype=torch.float64)
    assert execute_decisions(decisions, SimConfig()) is decisions
    held = execute_decisions(decisions, SimConfig(), period=3)
    assert held.shape == (2, 15) and torch.equal(held[:, ::3], decisions) and torch.equal(held[:, 2::3], decisions)
    with pytest.raises(ValueError, match="risk"):
        execute_decisions(decisions, SimConfig(vol_target=0.5))


def test_the_engine_s_execution_holds_between_decision_bars_from_a_flat_book():
    open_time = 1_735_689_600_000 + HOUR_MS * np.arange(30)
    ex = Execution.of(SimConfig(rebalance_every=4), HOUR_MS)
    bars = np.arange(30)
    decisions = np.arange(30, dtype=float) / 100
    held, src = ex.held(decisions, bars, open_time, HOUR_MS, None)
    decide = decision_mask(open_time, HOUR_MS, 4)
    first = int(np.flatnonzero(decide)[0])
    assert (held[:first] == 0).all() and (src[:first] == -1).all()
    changes = np.flatnonzero(np.diff(held)) + 1
    assert decide[changes].all() and np.array_equal(held[decide], decisions[decide])


def test_the_config_refuses_what_the_execution_can_not_do():
    def cfg(**sections: dict) -> Config:
        return from_dict(dict(sections))

    assert cfg().model.decision_every == 1 and cfg().model.band_floor is None
    assert cfg(sim={"rebalance_every": 16}).model.decision_every == 16
    assert cfg(sim={"rebalance_at": "funding"}, data={"timeframe_minutes": 60}).model.decision_every == 8
    assert cfg(sim={"band": 0.02, "band_learned": True}).model.band_floor == 0.02
    with pytest.raises(ConfigError, match=r"rebalance_every is 2 but sim\.rebalance_at is 'funding'"):
        cfg(sim={"rebalance_at": "funding", "rebalance_every": 2})
    with pytest.raises(ConfigError, match=r"sim\.vol_window"):
        cfg(sim={"vol_target": 0.5, "vol_window": 96})
    with pytest.raises(ConfigError, match="only a portfolio's"):
        cfg(model={"portfolio": {"neutral": "dollar"}})
    with pytest.raises(ConfigError, match="beta_window"):
        cfg(model={"kind": "portfolio", "portfolio": {"neutral": "beta", "beta_window": 200}})
    with pytest.raises(ConfigError, match=r"model\.decision_every \(4\) is derived"):
        cfg(model={"decision_every": 4})
    plain = SimConfig(band=0.1, band_learned=True, vol_target=0.4, rebalance_every=3).plain
    assert plain == dataclasses.replace(SimConfig(), rebalance_every=3)
