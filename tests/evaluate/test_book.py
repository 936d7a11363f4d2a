"""A book's walk-forward: one asset == the single-asset engine bar for bar, fast == per-slot reference, causality
across assets, masking of absent assets, and the baselines on hand-worked books."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from diffquant.config import HeadConfig, Hysteresis, ITransformerConfig, ModelConfig, SimConfig
from diffquant.data.splits import Series
from diffquant.evaluate.book import (
    BookSeries,
    book_decisions,
    book_decisions_reference,
    executed_book,
    walk_forward_book,
)
from diffquant.evaluate.book_baselines import cross_sectional_momentum, equal_weight, inverse_volatility
from diffquant.evaluate.hysteresis import apply_hysteresis
from diffquant.evaluate.walk_forward import policy_decisions, walk_forward
from diffquant.model.policy import PolicyNetwork
from diffquant.model.portfolio import PortfolioPolicy
from tests.evaluate.test_walk_forward import CTX, TF_MS, make_series

SIM = SimConfig()
H = Hysteresis()
TINY = ITransformerConfig(d_model=8, n_heads=2, n_layers=1, d_ff=16)
CFG = ModelConfig(itransformer=TINY, head=HeadConfig(dense=[8]))


def portfolio(leverage: float = 1.0) -> PortfolioPolicy:
    torch.manual_seed(0)
    model = PortfolioPolicy(CFG, 6, CTX, leverage=leverage, d_attn=8, n_heads=2)
    with torch.no_grad():
        model.head.state.weight.copy_(torch.tensor([[0.8, -0.5], [0.6, 0.4]]))
        nn.init.normal_(model.attention.out.weight, std=0.5)  # zero at init: give it weights as training would
        model.head.logits.bias.copy_(torch.tensor([0.0, 2.0]))  # gates near 1: the cap binds on two assets
    return model.eval()


def late(series: Series, bars: int) -> Series:
    """The same asset listed ``bars`` bars later (its first rows removed)."""
    return dataclasses.replace(
        series,
        **{k: getattr(series, k)[bars:] for k in ("features", "close", "funding", "open_time")},
        start=series.start - bars,
    )


def three_assets() -> BookSeries:
    a = make_series(400, CTX + 1, seed=1)
    b = make_series(400, CTX + 1, seed=2, gap_after=(150,))
    c = late(make_series(400, CTX + 1, seed=3), 30)  # absent for its first 30 + ctx - 1 slots
    return BookSeries.of([a, b, c], ["A", "B", "C"])


def test_one_asset_is_the_single_asset_engine_bar_for_bar():
    series = make_series(500, CTX + 1, seed=4, gap_after=(200,))
    model = portfolio()
    single = PolicyNetwork(CFG, 6, CTX).eval()
    single.backbone.load_state_dict(model.backbone.state_dict())
    single.head.load_state_dict(model.head.state_dict())
    book = BookSeries.of([series], ["X"])
    ours, theirs = book_decisions(model, book), policy_decisions(single, series)
    np.testing.assert_array_equal(ours.raw[:, 0], theirs.raw)
    np.testing.assert_array_equal(ours.gate[:, 0], theirs.gate)
    executed = apply_hysteresis(theirs.raw, H)
    np.testing.assert_array_equal(executed_book(ours, H, 1.0)[:, 0], executed)
    mine = walk_forward_book(book, executed[:, None], SIM, ours.gate).record
    ref = walk_forward(series, executed, SIM, theirs.raw, theirs.gate).record
    for column in ("gross", "commission", "funding", "net", "equity", "position", "gate"):
        np.testing.assert_array_equal(mine[column].to_numpy(), ref[column].to_numpy(), err_msg=column)
    np.testing.assert_array_equal(mine["trade"].to_numpy(), np.abs(ref["trade"].to_numpy()))
    np.testing.assert_array_equal(mine["w_X"].to_numpy(), ref["position"].to_numpy())
    assert (mine["time"] == ref["time"]).all()


def test_fast_decisions_equal_the_per_slot_reference():
    book, model = three_assets(), portfolio()
    fast, ref = book_decisions(model, book), book_decisions_reference(model, book)
    np.testing.assert_array_equal(np.isnan(fast.raw), np.isnan(ref.raw))
    np.testing.assert_allclose(fast.raw, ref.raw, atol=2e-6, equal_nan=True)
    np.testing.assert_allclose(fast.gate, ref.gate, atol=2e-6, equal_nan=True)
    assert np.nansum(np.abs(fast.raw), axis=1).max() > 0.9  # the cap is reached: the test covers it


def test_absent_assets_hold_nothing_and_the_book_stays_within_the_leverage():
    book, model = three_assets(), portfolio(leverage=0.8)
    decisions = book_decisions(model, book)
    absent = book.rows < CTX - 1
    # C is listed 30 bars late; B's gap pushes its last 3 bars past the others' end, where only B trades
    assert absent[: 30 + CTX - 1, 2].all() and not absent[30 + CTX - 1 : -3, 2].any() and absent[-3:, [0, 2]].all()
    assert np.isnan(decisions.raw[absent]).all()
    assert np.isfinite(decisions.raw[~absent]).all()
    assert np.nansum(np.abs(decisions.raw), axis=1).max() <= 0.8 + 1e-12
    executed = executed_book(decisions, H, 0.8)
    result = walk_forward_book(book, executed, SIM, decisions.gate, leverage=0.8)
    assert (result.record["gross_exposure"] <= 0.8 + 1e-12).all()
    np.testing.assert_allclose(
        result.record["net"], sum(result.assets[s]["net"] for s in book.symbols), rtol=0, atol=1e-15
    )


@pytest.mark.parametrize("changed", [0, 1])
def test_decisions_are_causal_across_assets(changed):
    """Changing one asset's bars after slot t changes no weight of any asset at or before t."""
    book, model = three_assets(), portfolio()
    t = 250
    cut = int(book.rows[t, changed]) + 1
    s = book.assets[changed]
    rng = np.random.default_rng(9)
    features = s.features.copy()
    features[cut:] = rng.normal(size=features[cut:].shape).astype(np.float32)
    close = s.close.copy()
    close[cut:] *= np.exp(rng.normal(0, 0.05, len(close) - cut))
    other = dataclasses.replace(s, features=features, close=close)
    moved = BookSeries.of([other if a == changed else x for a, x in enumerate(book.assets)], book.symbols)
    before, after = book_decisions(model, book), book_decisions(model, moved)
    np.testing.assert_array_equal(before.raw[: t + 1], after.raw[: t + 1])
    assert not np.allclose(before.raw[t + 1 :], after.raw[t + 1 :], equal_nan=True)  # the later book does move


def hand_book(closes: list[list[float]], start: int = 1) -> BookSeries:
    """A book of assets with the given closes on one clock (no features needed by the rules)."""
    series = []
    for c in closes:
        n = len(c)
        t = 1_735_689_600_000 + np.arange(n, dtype=np.int64) * TF_MS  # 2025-01-01 is a Wednesday
        series.append(Series(np.zeros((n, 1), np.float32), np.array(c, float), np.zeros(n), t, start, TF_MS, ["x"]))
    return BookSeries.of(series)


def test_equal_weight_holds_one_over_the_assets_with_a_bar():
    book = hand_book([[1, 2, 3, 4], [1, 1, 1, 1]])
    book = BookSeries.of([book.assets[0], late(book.assets[1], 2)])  # the second asset has bars 2 and 3 only
    w = equal_weight(book, leverage=2.0)
    np.testing.assert_array_equal(w, [[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    np.testing.assert_array_equal(equal_weight(book, leverage=0.5)[2], [0.25, 0.25])


def test_inverse_volatility_weights_by_past_returns_only():
    # asset 0 moves +-10%, asset 1 +-5%: the weights are 1/3 and 2/3 once two returns exist (bar 2)
    book = hand_book([[100, 110, 99, 108.9, 500], [100, 105, 99.75, 104.7375, 1]])
    w = inverse_volatility(book, lookback=2, leverage=1.0)
    assert (w[:2] == 0).all()  # flat until two returns exist
    np.testing.assert_allclose(w[2], [1 / 3, 2 / 3])
    np.testing.assert_allclose(w[3:], [[1 / 3, 2 / 3]] * 2)  # held until the week turns; the last bar unseen


def test_cross_sectional_momentum_is_long_winners_short_losers_and_weekly():
    day = 48  # 30-minute bars: a clock over 8 days, the week turning on Monday 2025-01-06 00:00
    n = 8 * day
    up, flat, down = (np.linspace(1, 2, n), np.ones(n), np.linspace(2, 1, n))
    up[5 * day :] = up[5 * day - 1] * np.linspace(1, 0.5, n - 5 * day)  # the winner turns loser on Monday
    book = hand_book([list(up), list(flat), list(down)])
    w = cross_sectional_momentum(book, lookback=4, leverage=1.0)
    assert (w[:4] == 0).all()
    np.testing.assert_allclose(w[4], [0.5, 0.0, -0.5])  # the median asset holds nothing; gross = 1
    monday = 5 * day - 1  # the slot whose close is Monday 00:00 rebalances
    np.testing.assert_allclose(w[monday - 1], [0.5, 0.0, -0.5])
    np.testing.assert_allclose(w[monday + 5], w[monday])
    np.testing.assert_allclose(np.abs(w[4:]).sum(axis=1), 1.0)
