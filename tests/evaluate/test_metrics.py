"""Metrics against hand-worked examples; the expected numbers are written out, not recomputed by the same formula."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from diffquant.evaluate.metrics import annualization, compute_metrics, period

DAY = 1440  # daily bars keep the annualisation factors readable: sqrt(365), sqrt(252)


def make_record(
    net: list[float],
    position: list[float] | None = None,
    gross: list[float] | None = None,
    commission: list[float] | None = None,
    funding: list[float] | None = None,
    gate: list[float] | None = None,
) -> pd.DataFrame:
    n = len(net)
    pos = np.zeros(n) if position is None else np.asarray(position, dtype=float)
    return pd.DataFrame(
        {
            "time": pd.date_range("2025-07-01", periods=n, freq="D", tz="UTC"),
            "close": np.full(n, 100.0),
            "raw_position": np.full(n, np.nan),
            "gate": np.full(n, np.nan) if gate is None else gate,
            "position": pos,
            "trade": np.diff(pos, prepend=0.0),
            "gross": np.asarray(net if gross is None else gross, dtype=float),
            "commission": np.zeros(n) if commission is None else commission,
            "funding": np.zeros(n) if funding is None else funding,
            "net": np.asarray(net, dtype=float),
            "equity": np.cumprod(1.0 + np.asarray(net, dtype=float)),
        }
    )


def test_annualization() -> None:
    assert annualization(30) == pytest.approx(math.sqrt(17_520))  # 48 bars a day, 365 days
    assert annualization(30, 252) == pytest.approx(109.98, abs=0.01)  # upstream's sqrt(12,096)
    assert annualization(DAY, 365) == pytest.approx(math.sqrt(365))


def test_hand_worked_returns() -> None:
    m = compute_metrics(make_record([0.01, -0.02, 0.03]), DAY)
    # mean = 0.02 / 3; population variance = (0.01² + 0.02² + 0.03²) / 3 - mean² = 0.0038 / 9
    assert m["sharpe"] == pytest.approx(0.02 / 3 / math.sqrt(0.0038 / 9) * math.sqrt(365), rel=1e-12)
    assert m["sharpe"] == pytest.approx(6.1985, abs=1e-4)
    assert m["sharpe_252"] == pytest.approx(0.02 / 3 / math.sqrt(0.0038 / 9) * math.sqrt(252), rel=1e-12)
    # downside deviation = sqrt(0.02² / 3) over all three bars: sortino = (0.02 / 3) / (0.02 / sqrt(3)) sqrt(365)
    assert m["sortino"] == pytest.approx(math.sqrt(365 / 3), rel=1e-12)
    # equity 1.01, 0.9898, 1.019494; the fall from 1.01 to 0.9898 is 2 %
    assert m["total_return_pct"] == pytest.approx(1.9494, rel=1e-12)
    assert m["max_drawdown_pct"] == pytest.approx(2.0, rel=1e-12)
    assert m["n_bars"] == 3.0


def test_annual_return_and_calmar_compound_over_the_period() -> None:
    # 3 daily bars of a 6-day year = half a year: annual = 1.019494² - 1
    m = compute_metrics(make_record([0.01, -0.02, 0.03]), DAY, days_per_year=6)
    assert m["annual_return_pct"] == pytest.approx(3.936802, abs=1e-6)
    assert m["calmar"] == pytest.approx(0.03936802 / 0.02, rel=1e-6)


def test_drawdown_peak_starts_at_the_initial_capital() -> None:
    assert compute_metrics(make_record([-0.1, 0.05]), DAY)["max_drawdown_pct"] == pytest.approx(10.0)
    # equity 1.1, 1.045, 0.99275: (1.1 - 0.99275) / 1.1
    assert compute_metrics(make_record([0.1, -0.05, -0.05]), DAY)["max_drawdown_pct"] == pytest.approx(9.75)


def test_ratios_are_scale_invariant() -> None:
    net = np.random.default_rng(0).normal(0.0002, 0.01, 500)
    base = compute_metrics(make_record(list(net)), 30)
    for c in (0.25, 4.0):
        scaled = compute_metrics(make_record(list(c * net)), 30)
        assert scaled["sharpe"] == pytest.approx(base["sharpe"], rel=1e-10)
        assert scaled["sortino"] == pytest.approx(base["sortino"], rel=1e-10)


def test_an_all_flat_policy_scores_zero_without_nan() -> None:
    m = compute_metrics(make_record([0.0] * 48), 30, flat_threshold=0.05)
    assert all(math.isfinite(v) for v in m.values())
    for key in (
        "sharpe",
        "sharpe_252",
        "sortino",
        "calmar",
        "total_return_pct",
        "annual_return_pct",
        "max_drawdown_pct",
        "rebalances",
        "turnover",
        "exposure",
        "long_accuracy",
        "short_accuracy",
        "direction_accuracy",
        "long_share",
        "short_share",
    ):
        assert m[key] == 0.0, key
    assert m["flat_share"] == 1.0


def test_no_variation_is_a_zero_sharpe_not_a_huge_one() -> None:
    assert compute_metrics(make_record([0.1, 0.1, 0.1]), DAY)["sharpe"] == 0.0
    assert compute_metrics(make_record([0.1, 0.1, 0.1]), DAY)["sortino"] == 0.0  # no losing bar


def test_a_short_is_right_when_the_price_falls() -> None:
    position = [-1.0, -1.0, -1.0, 1.0]
    returns = [-0.01, -0.02, 0.01, 0.01]
    gross = [p * r for p, r in zip(position, returns, strict=True)]  # 0.01, 0.02, -0.01, 0.01
    m = compute_metrics(make_record(gross, position=position), 30)
    assert m["short_accuracy"] == pytest.approx(2 / 3)  # upstream reported 1/3
    assert m["long_accuracy"] == 1.0
    assert m["direction_accuracy"] == pytest.approx(3 / 4)
    assert (m["long_bars"], m["short_bars"]) == (1.0, 3.0)


def test_exposure_shares_turnover_and_costs() -> None:
    position = [0.0, 0.5, 0.5, -0.25]  # trades 0, 0.5, 0, -0.75
    rec = make_record(
        [0.0, 0.001, -0.002, 0.0],
        position=position,
        commission=[0.0, 0.00035, 0.0, 0.000525],
        funding=[0.0, 0.0001, 0.0001, -0.00005],
        gate=[0.2, 0.4, 0.6, 0.8],
    )
    m = compute_metrics(rec, 30)
    assert m["rebalances"] == 2.0
    assert m["turnover"] == pytest.approx(1.25 / 4)
    assert m["exposure"] == pytest.approx(1.25 / 4)
    assert (m["long_share"], m["short_share"], m["flat_share"]) == (0.5, 0.25, 0.25)
    assert m["commission_pct"] == pytest.approx(0.0875)
    assert m["funding_pct"] == pytest.approx(0.015)
    assert m["mean_gate"] == pytest.approx(0.5)
    m = compute_metrics(rec, 30, flat_threshold=0.3)
    assert (m["long_share"], m["short_share"], m["flat_share"]) == (0.5, 0.0, 0.5)
    assert m["short_accuracy"] == 0.0 and m["short_bars"] == 0.0
    assert "mean_gate" not in compute_metrics(make_record([0.0, 0.01]), 30)  # a baseline has no gate


def test_period_and_empty_record() -> None:
    assert period(make_record([0.0, 0.0, 0.0])) == {
        "first_bar": "2025-07-01T00:00:00+00:00",
        "last_bar": "2025-07-03T00:00:00+00:00",
    }
    with pytest.raises(ValueError, match="empty"):
        compute_metrics(make_record([]), 30)
