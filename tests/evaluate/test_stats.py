"""Tests for diffquant.evaluate.stats: PSR, DSR, expected max Sharpe, stationary bootstrap and its Sharpe CI."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from diffquant.evaluate.stats import (
    bootstrap_sharpe_ci,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    probabilistic_sharpe_ratio,
    psr_from_moments,
    stationary_bootstrap_indices,
)

PHI = NormalDist().cdf
PHI_INV = NormalDist().inv_cdf


# --- PSR ---------------------------------------------------------------------------------------------------


def test_psr_worked_example_normal():
    # sr=0.1, n=100, skew=0, raw kurt=3: denominator 1 - 0 + (3-1)/4 * 0.01 = 1.005
    expected = PHI(0.1 * math.sqrt(99) / math.sqrt(1.005))
    assert psr_from_moments(0.1, 100, 0.0, 3.0) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.83953, abs=1e-4)


def test_psr_worked_example_skewed_with_benchmark():
    # sr=0.2, SR*=0.05, n=250, skew=-1, raw kurt=6: denom = 1 + 0.2 + 5/4*0.04 = 1.25
    expected = PHI(0.15 * math.sqrt(249) / math.sqrt(1.25))
    assert psr_from_moments(0.2, 250, -1.0, 6.0, 0.05) == pytest.approx(expected, abs=1e-12)


def test_psr_from_returns_uses_population_moments():
    r = np.array([0.01, -0.02, 0.03, 0.005, -0.01, 0.02, 0.0, 0.015])
    mu, sd = r.mean(), r.std(ddof=0)
    skew = np.mean((r - mu) ** 3) / sd**3
    kurt = np.mean((r - mu) ** 4) / sd**4
    sr = mu / sd
    expected = PHI(sr * math.sqrt(len(r) - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2))
    assert probabilistic_sharpe_ratio(r) == pytest.approx(expected, abs=1e-12)


def test_psr_at_benchmark_is_half():
    assert psr_from_moments(0.1, 500, -0.5, 5.0, benchmark_sr=0.1) == pytest.approx(0.5, abs=1e-12)
    r = np.random.default_rng(1).normal(0.001, 0.01, 300)
    sr = r.mean() / r.std()
    assert probabilistic_sharpe_ratio(r, benchmark_sr=sr) == pytest.approx(0.5, abs=1e-12)


def test_psr_increases_with_n():
    values = [psr_from_moments(0.05, n, 0.0, 3.0) for n in (50, 100, 500, 2000)]
    assert np.all(np.diff(values) > 0)


def test_negative_skew_and_fat_tails_lower_psr():
    base = psr_from_moments(0.1, 200, 0.0, 3.0)
    assert psr_from_moments(0.1, 200, -1.0, 3.0) < base
    assert psr_from_moments(0.1, 200, 0.0, 8.0) < base


def test_raw_not_excess_kurtosis():
    # A normal has raw kurtosis 3 (excess 0): the two conventions must give different PSRs.
    raw = psr_from_moments(0.3, 50, 0.0, 3.0)
    excess = psr_from_moments(0.3, 50, 0.0, 0.0)
    assert raw == pytest.approx(PHI(0.3 * math.sqrt(49) / math.sqrt(1 + 0.5 * 0.09)), abs=1e-12)
    assert abs(raw - excess) > 1e-3
    # probabilistic_sharpe_ratio feeds psr_from_moments the raw kurtosis, not the excess one.
    r = np.random.default_rng(2).normal(0.02, 0.1, 50)
    mu, sd = r.mean(), r.std()
    sr, skew = mu / sd, float(np.mean((r - mu) ** 3) / sd**3)
    kurt_raw = float(np.mean((r - mu) ** 4) / sd**4)
    assert probabilistic_sharpe_ratio(r) == pytest.approx(psr_from_moments(sr, 50, skew, kurt_raw), abs=1e-12)
    assert abs(probabilistic_sharpe_ratio(r) - psr_from_moments(sr, 50, skew, kurt_raw - 3.0)) > 1e-4


def test_psr_rejects_degenerate_input():
    with pytest.raises(ValueError):
        probabilistic_sharpe_ratio(np.ones(10))
    with pytest.raises(ValueError):
        psr_from_moments(0.1, 1, 0.0, 3.0)


# --- expected max Sharpe and DSR ---------------------------------------------------------------------------


def test_expected_max_sharpe_by_hand():
    g = 0.5772156649
    n, v = 10, 0.04
    expected = math.sqrt(v) * ((1 - g) * PHI_INV(1 - 1 / n) + g * PHI_INV(1 - 1 / (n * math.e)))
    assert expected_max_sharpe(n, v) == pytest.approx(expected, rel=1e-9)


def test_expected_max_sharpe_properties():
    assert expected_max_sharpe(1, 0.3) == 0.0
    values = [expected_max_sharpe(n, 1.0) for n in (2, 5, 10, 100, 1000)]
    assert np.all(np.diff(values) > 0)
    assert expected_max_sharpe(50, 4.0) == pytest.approx(2.0 * expected_max_sharpe(50, 1.0), rel=1e-12)


def test_dsr_paper_example():
    # Bailey & López de Prado (2014): annual SR 2.5 on T=1250 daily obs, skew -3, raw kurt 10, N=100 trials,
    # annual variance of the trials' SRs 0.5 -> DSR ~ 0.9004. Per-period units: /sqrt(250) and /250.
    sr = 2.5 / math.sqrt(250)
    v = 0.5 / 250
    sr0 = expected_max_sharpe(100, v)
    assert sr0 * math.sqrt(250) == pytest.approx(1.789, abs=2e-3)  # annualised expected max SR
    assert psr_from_moments(sr, 1250, -3.0, 10.0, sr0) == pytest.approx(0.9004, abs=0.01)


def test_dsr_equals_psr_at_expected_max():
    r = np.random.default_rng(3).normal(0.002, 0.01, 1000)
    sr0 = expected_max_sharpe(20, 0.001)
    assert deflated_sharpe_ratio(r, 20, 0.001) == pytest.approx(probabilistic_sharpe_ratio(r, sr0), abs=1e-12)
    assert deflated_sharpe_ratio(r, 20, 0.001) < probabilistic_sharpe_ratio(r)
    assert deflated_sharpe_ratio(r, 1, 0.001) == pytest.approx(probabilistic_sharpe_ratio(r), abs=1e-12)


# --- stationary bootstrap ----------------------------------------------------------------------------------


def test_bootstrap_indices_valid():
    idx = stationary_bootstrap_indices(97, 5.0, 40, np.random.default_rng(0))
    assert idx.shape == (40, 97)
    assert np.issubdtype(idx.dtype, np.integer)
    assert idx.min() >= 0 and idx.max() < 97


def test_bootstrap_mean_run_length():
    n, n_boot = 5000, 50
    for mean_block in (1.0, 10.0, 48.0):
        idx = stationary_bootstrap_indices(n, mean_block, n_boot, np.random.default_rng(4))
        breaks = np.count_nonzero(idx[:, 1:] != (idx[:, :-1] + 1) % n)
        mean_run = n_boot * n / (n_boot + breaks)
        assert mean_run == pytest.approx(mean_block, rel=0.1)


def test_bootstrap_wraps_around():
    # With mean_block huge, a row is (almost surely) one block: consecutive indices modulo n.
    idx = stationary_bootstrap_indices(20, 1e12, 5, np.random.default_rng(5))
    assert np.all(idx[:, 1:] == (idx[:, :-1] + 1) % 20)


def test_bootstrap_rejects_small_block():
    with pytest.raises(ValueError):
        stationary_bootstrap_indices(10, 0.5, 3, np.random.default_rng(0))


# --- Sharpe CI ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # 100 bootstrap intervals of 300 resamples each
def test_sharpe_ci_coverage():
    ppy = 48 * 365
    mean, std, n = 0.0005, 0.01, 2000
    true_sr = mean / std * math.sqrt(ppy)
    rng = np.random.default_rng(123)
    reps = 100
    hits = 0
    for k in range(reps):
        r = rng.normal(mean, std, n)
        lo, hi = bootstrap_sharpe_ci(r, ppy, mean_block=48, n_boot=300, seed=k)
        assert lo < hi
        hits += lo <= true_sr <= hi
    assert 88 <= hits <= 99


def test_sharpe_ci_contains_point_estimate_and_is_deterministic():
    r = np.random.default_rng(7).normal(0.001, 0.01, 500)
    sr = r.mean() / r.std() * math.sqrt(252)
    lo, hi = bootstrap_sharpe_ci(r, 252, mean_block=5, n_boot=500, seed=1)
    assert lo < sr < hi
    assert bootstrap_sharpe_ci(r, 252, mean_block=5, n_boot=500, seed=1) == (lo, hi)


def test_paired_ci_identical_series_is_zero():
    r = np.random.default_rng(8).normal(0.001, 0.01, 400)
    assert bootstrap_sharpe_ci(r, 252, mean_block=10, n_boot=200, benchmark=r.copy()) == (0.0, 0.0)


def test_paired_ci_shift():
    # Benchmark = returns minus a constant: the difference CI must lie above zero (paired resampling).
    r = np.random.default_rng(9).normal(0.0005, 0.01, 1000)
    lo, _ = bootstrap_sharpe_ci(r, 252, mean_block=10, n_boot=300, benchmark=r - 0.002)
    assert lo > 0


def test_constant_series_sharpe_is_zero():
    assert bootstrap_sharpe_ci(np.full(100, 0.01), 252, mean_block=3, n_boot=50) == (0.0, 0.0)
