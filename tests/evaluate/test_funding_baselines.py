"""The funding baselines and the volatility-targeted ones: cross-sectional carry equals a hand computation on a
3-asset toy (weights and the engine's returns), the funding-extremes rule likewise, neither reads funding after its
decision, and the volatility-targeted buy-and-hold holds min(cap, target / sigma)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from diffquant.config import BaselineConfig, SimConfig
from diffquant.data.splits import Series
from diffquant.evaluate.baselines import funding_extreme_decisions
from diffquant.evaluate.book import BookSeries, walk_forward_book
from diffquant.evaluate.book_baselines import (
    cross_sectional_carry,
    equal_weight,
    funding_extremes,
    funding_paid,
    priced_with,
)
from diffquant.evaluate.scoring import Scorer
from diffquant.sim.execution import per_bar_target

HOUR_MS = 3_600_000
T0 = 1_735_689_600_000  # 2025-01-01 00:00 UTC
N = 40  # hourly bars: the settlements fall in bars 7, 15, 23, 31, 39 (closes at 08:00, 16:00, 00:00 ...)
STAMPS = [7, 15, 23, 31, 39]
RATES = {  # per asset, the rate settled at each stamp
    "A": [1e-4, 4e-4, -2e-4, 1e-4, 0.0],
    "B": [3e-4, 1e-4, 5e-4, -1e-4, 2e-4],
    "C": [2e-4, 2e-4, 1e-4, 3e-4, 1e-4],
}


def toy(start: int = 10) -> BookSeries:
    rng = np.random.default_rng(0)
    series = []
    for name, rates in RATES.items():
        funding = np.zeros(N)
        funding[STAMPS] = rates
        close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, N)))
        features = np.zeros((N, 1), np.float32)
        series.append(Series(features, close, funding, T0 + HOUR_MS * np.arange(N), start, HOUR_MS, [name]))
    return BookSeries.of(series, list(RATES))


def test_carry_equals_a_hand_computation_on_three_assets():
    """k = 1: long the lowest funding, short the highest, 0.5 each, from each stamp's close to the next."""
    book = toy()
    weights = cross_sectional_carry(book, k=1, leverage=1.0, hours=8)
    expected = np.zeros((N, 3))
    # stamp 7: A 1, B 3, C 2 (bp) -> long A, short B; stamp 15: A 4, B 1, C 2 -> long B, short A;
    # stamp 23: A -2, B 5, C 1 -> long A, short B; stamp 31: A 1, B -1, C 3 -> long B, short C;
    # stamp 39: A 0, B 2, C 1 -> long A, short B
    for stamp, (long, short) in zip(STAMPS, [(0, 1), (1, 0), (0, 1), (1, 2), (0, 1)], strict=True):
        expected[stamp:, :] = 0.0
        expected[stamp:, long], expected[stamp:, short] = 0.5, -0.5
    np.testing.assert_array_equal(weights, expected)

    # through the engine (lag 1: the weights decided at close k are held during bar k + 2), by hand per bar
    sim = SimConfig(execution_lag_bars=1)
    record = walk_forward_book(book, weights, sim, leverage=1.0).record
    close = np.stack([s.close for s in book.assets], 1)
    funding = np.stack([s.funding for s in book.assets], 1)
    net = []
    prev = np.zeros(3)
    for j in range(book.start, N):
        held = weights[j - 2]
        ret = close[j] / close[j - 1] - 1.0
        cost = np.abs(held - prev).sum() * sim.cost_rate
        net.append(float(held @ ret - cost - held @ funding[j]))
        prev = held
    np.testing.assert_allclose(record["net"].to_numpy(), net, rtol=0, atol=1e-15)
    # the entry (stamp 7's book), then the changes of stamps 15, 23 and 31 (39's would be held after the data)
    assert np.flatnonzero(record["trade"].to_numpy()).tolist() == [0, 17 - book.start, 25 - book.start, 33 - book.start]


def test_carry_takes_half_the_ready_assets_and_waits_for_a_full_interval():
    book = toy()
    paid = funding_paid(book, 8)
    assert np.isnan(paid[:7]).all() and np.isfinite(paid[7:]).all()
    np.testing.assert_array_equal(paid[7], [1e-4, 3e-4, 2e-4])
    np.testing.assert_array_equal(paid[14], [1e-4, 3e-4, 2e-4])  # the interval (6, 14] still holds stamp 7
    np.testing.assert_array_equal(paid[15], [4e-4, 1e-4, 2e-4])
    wide = cross_sectional_carry(book, k=3, leverage=2.0, hours=8)  # k' = 3 // 2 = 1; gross min(1, 2) = 1
    np.testing.assert_array_equal(wide, cross_sectional_carry(book, k=1, leverage=1.0, hours=8))


def test_the_funding_extremes_rule_by_hand_one_asset_and_a_book():
    book = toy()
    weights = funding_extremes(book, threshold=3e-4, leverage=1.0, hours=8)
    expected = np.zeros((N, 3))
    third = 1.0 / 3.0
    expected[7:15] = [0, -third, 0]  # B at 3 bp
    expected[15:23] = [-third, 0, 0]  # A at 4 bp
    expected[23:31] = [0, -third, 0]  # B at 5 bp (A at -2 bp is not at -3 bp)
    expected[31:39] = [0, 0, -third]  # C at 3 bp
    expected[39:] = 0.0
    np.testing.assert_array_equal(weights, expected)
    one = funding_extreme_decisions(book.assets[1], 3e-4, 8)
    np.testing.assert_array_equal(one, np.r_[np.zeros(7), -np.ones(8), np.zeros(8), -np.ones(8), np.zeros(9)])


def test_no_funding_rule_reads_funding_after_its_decision():
    """Causality of the carry ranking: every settlement and bar after slot t changed, no weight at t or before
    moves (and later ones do)."""
    book = toy()
    for t in (7, 20, 31):
        changed = []
        for s in book.assets:
            funding = s.funding.copy()
            funding[t + 1 :] = -funding[t + 1 :] * 3 + 1e-4
            close = np.r_[s.close[: t + 1], s.close[t + 1 :] * 1.3]
            changed.append(dataclasses.replace(s, funding=funding, close=close))
        other = BookSeries.of(changed, list(RATES))
        for rule in (
            lambda b: cross_sectional_carry(b, 1, 1.0, 8),
            lambda b: funding_extremes(b, 3e-4, 1.0, 8),
        ):
            before, after = rule(book), rule(other)
            assert np.array_equal(before[: t + 1], after[: t + 1])
        assert not np.array_equal(cross_sectional_carry(book, 1, 1.0, 8), cross_sectional_carry(other, 1, 1.0, 8))


def test_the_volatility_targeted_baselines():
    """Buy-and-hold scaled to the target: at each decision bar it holds min(cap, target / sigma), sigma the root
    mean square of the last vol_window log returns; the targeted 1/N is 1/N's weights under the target. The
    baselines are priced without the policy's band and target (``priced_with``)."""
    rng = np.random.default_rng(1)
    n, start = 300, 60
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.006, n)))
    series = Series(
        np.zeros((n, 1), np.float32), close, np.zeros(n), T0 + HOUR_MS * np.arange(n), start, HOUR_MS, ["x"]
    )
    sim = SimConfig(vol_window=24, vol_max_scale=3.0, band=0.1)
    scorer = Scorer(sim, 60, 365)
    record = scorer.constant(series, 1.0, vol_target=0.4)[0].record
    logs = np.log(close[1:] / close[:-1])
    for j in range(start, n):
        k = j - 2  # the decision held during bar j (lag 1)
        sigma = np.sqrt(np.mean(logs[k - 24 : k] ** 2))  # log returns of bars k-23 .. k
        assert record["position"].iloc[j - start] == pytest.approx(min(3.0, per_bar_target(0.4, 60) / sigma), rel=1e-12)
    plain = scorer.constant(series, 1.0)[0].record
    assert (plain["position"] == 1.0).all()  # no band, no target: held as it is
    baselines = BaselineConfig(vol_target=0.4)
    assert priced_with("equal_weight_vt", sim, baselines) == dataclasses.replace(sim, band=0.0, vol_target=0.4)
    assert priced_with("carry", dataclasses.replace(sim, vol_target=0.7), baselines) == sim.plain
    assert priced_with("equal_weight_vt", dataclasses.replace(sim, vol_target=0.7), baselines).vol_target == 0.7
    book = toy(start=30)
    targeted = walk_forward_book(
        book, equal_weight(book, 1.0), priced_with("equal_weight_vt", sim, baselines), leverage=1.0
    )
    w = targeted.record[["w_A", "w_B", "w_C"]].to_numpy()
    assert np.allclose(w[:, 0], w[:, 1]) and np.allclose(w[:, 1], w[:, 2]) and (np.abs(w).sum(1) <= 1.0 + 1e-12).all()
