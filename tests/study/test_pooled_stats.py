"""Pooled policy-minus-benchmark Sharpe: null case, joint vs independent resampling, NaN handling, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffquant.evaluate.metrics import sharpe
from diffquant.study.pooled_stats import _sharpe_ignoring_nan, pooled_sharpe_difference

BARS_PER_YEAR = 365.0


def _run(policy: np.ndarray, benchmark: np.ndarray, period: np.ndarray, **kwargs) -> dict[str, float]:
    args = {"bars_per_year": BARS_PER_YEAR, "mean_block": 5.0, "n_boot": 400, "seed": 0} | kwargs
    return pooled_sharpe_difference(policy, benchmark, period, **args)


def test_identical_policy_and_benchmark_give_zero():
    returns = np.random.default_rng(0).normal(0.0, 0.01, size=(600, 3))
    result = _run(returns, returns.copy(), np.arange(600) // 200)
    assert result["mean"] == 0.0
    assert (result["ci_low"], result["ci_high"]) == (0.0, 0.0)
    assert result["p_value"] == 1.0
    assert result["n_asset_periods"] == 9
    assert result["n_boot"] == 400


def test_perfectly_correlated_copies_do_not_narrow_the_joint_interval():
    rng = np.random.default_rng(1)
    policy, benchmark = rng.normal(0.001, 0.01, size=(900, 1)), rng.normal(0.0, 0.01, size=(900, 1))
    period = np.arange(900) // 300
    n_assets = 9
    copies = np.tile(policy, n_assets), np.tile(benchmark, n_assets)

    one = _run(policy, benchmark, period)
    joint = _run(*copies, period)
    independent = _run(*copies, period, joint=False)

    width = one["ci_high"] - one["ci_low"]
    assert joint["mean"] == pytest.approx(one["mean"], rel=1e-12)
    assert joint["ci_high"] - joint["ci_low"] == pytest.approx(width, rel=1e-9)
    assert joint["n_asset_periods"] == 3 * n_assets
    # independent draws average 9 "independent" copies: the width shrinks by about sqrt(9) = 3
    assert 0.2 < (independent["ci_high"] - independent["ci_low"]) / width < 0.55


def test_nan_asset_periods_are_left_out_not_padded():
    rng = np.random.default_rng(2)
    policy = rng.normal(0.001, 0.01, size=(40, 3))
    benchmark = rng.normal(0.0, 0.01, size=(40, 3))
    period = np.repeat([0, 1], 20)
    policy[20:, 2] = np.nan  # asset 2 has no data in period 1
    policy[21:, 0] = np.nan  # asset 0 has a single bar in period 1: left out
    policy[:5, 1] = np.nan  # asset 1 misses its first 5 bars of period 0 (policy only: the bar is dropped for both)
    benchmark[7, 1] = np.nan  # ... and bar 7 (benchmark only)

    ann = math.sqrt(BARS_PER_YEAR)
    kept_1 = np.r_[5:7, 8:20]
    expected = [
        sharpe(policy[:20, 0], ann) - sharpe(benchmark[:20, 0], ann),
        sharpe(policy[kept_1, 1], ann) - sharpe(benchmark[kept_1, 1], ann),
        sharpe(policy[20:, 1], ann) - sharpe(benchmark[20:, 1], ann),
        sharpe(policy[:20, 2], ann) - sharpe(benchmark[:20, 2], ann),
    ]
    result = _run(policy, benchmark, period, mean_block=3.0)
    assert result["n_asset_periods"] == 4
    assert result["mean"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert np.isfinite([result["ci_low"], result["ci_high"], result["p_value"]]).all()


def test_resampled_rows_with_gaps_use_only_their_bars():
    # the bootstrap's Sharpe of resampled rows of a partially missing asset, against a row-by-row loop
    rng = np.random.default_rng(5)
    rows = rng.normal(0.0, 1.0, size=(60, 25))
    rows[rng.random(rows.shape) < 0.3] = np.nan
    rows[0, 1:] = np.nan  # a single bar: scores 0
    rows[1, :] = np.nan  # no bar: scores 0
    expected = [sharpe(r[~np.isnan(r)], 2.0) if np.sum(~np.isnan(r)) >= 2 else 0.0 for r in rows]
    assert _sharpe_ignoring_nan(rows, 2.0).tolist() == pytest.approx(expected, abs=1e-12)


def test_clear_edge_has_interval_above_zero():
    rng = np.random.default_rng(3)
    benchmark = rng.normal(0.0, 0.01, size=(1200, 4))
    policy = benchmark + rng.normal(0.002, 0.002, size=(1200, 4))
    result = _run(policy, benchmark, np.arange(1200) // 300)
    assert 0.0 < result["ci_low"] < result["mean"] < result["ci_high"]
    assert result["p_value"] == 0.0


def test_same_seed_same_output_other_seed_other_interval():
    rng = np.random.default_rng(4)
    policy, benchmark = rng.normal(0.0, 0.01, size=(300, 2)), rng.normal(0.0, 0.01, size=(300, 2))
    period = np.arange(300) // 100
    for joint in (True, False):
        first = _run(policy, benchmark, period, seed=11, joint=joint)
        assert _run(policy, benchmark, period, seed=11, joint=joint) == first
        assert _run(policy, benchmark, period, seed=12, joint=joint)["ci_low"] != first["ci_low"]


def test_input_errors():
    good = np.zeros((10, 2))
    with pytest.raises(ValueError, match="policy and benchmark"):
        _run(good, np.zeros((10, 3)), np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="period"):
        _run(good, good, np.zeros(9, dtype=int))
    with pytest.raises(ValueError, match="no asset-period"):
        _run(np.full((10, 2), np.nan), good, np.zeros(10, dtype=int))
