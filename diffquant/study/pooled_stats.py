"""Policy-minus-benchmark Sharpe pooled over asset-periods, with a joint stationary-bootstrap interval, and the
smallest difference that bootstrap could detect.

Assets traded over the same bars move together, so a bootstrap that resamples each asset on its own treats A
correlated assets as A independent trials and overstates the evidence roughly √A-fold. Resampling the same time
indices for every asset keeps that correlation in the interval (and in the detectable difference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from diffquant.evaluate.metrics import sharpe_along_last_axis
from diffquant.evaluate.stats import stationary_bootstrap_indices

ALPHA = 0.05


def _sharpe_ignoring_nan(x: np.ndarray, ann: float) -> np.ndarray:
    """Sharpe along the last axis of the non-NaN values of each row; 0 for a row with fewer than 2 of them.

    Rows are grouped by their count of values, each group's values packed to the front, so every Sharpe goes
    through ``sharpe_along_last_axis`` vectorised.
    """
    missing = np.isnan(x)
    if not missing.any():
        return sharpe_along_last_axis(x, ann)
    count = x.shape[-1] - missing.sum(axis=-1)
    out = np.zeros(x.shape[:-1])
    full = count == x.shape[-1]
    out[full] = sharpe_along_last_axis(x[full], ann)
    partial = ~full & (count >= 2)
    order = np.argsort(missing[partial], axis=-1, kind="stable")
    packed = np.take_along_axis(x[partial], order, axis=-1)
    sharpes = np.zeros(len(packed))
    for k in np.unique(count[partial]):
        rows = count[partial] == k
        sharpes[rows] = sharpe_along_last_axis(packed[rows, :k], ann)
    out[partial] = sharpes
    return out


def _validate(policy: np.ndarray, benchmark: np.ndarray, period: np.ndarray, bars_per_year: float, n_boot: int) -> None:
    if policy.ndim != 2 or policy.shape != benchmark.shape:
        raise ValueError(
            f"policy and benchmark must both be (T bars, A assets), got {policy.shape} and {benchmark.shape}"
        )
    if period.shape != (policy.shape[0],):
        raise ValueError(f"period must label each of the {policy.shape[0]} bars, got shape {period.shape}")
    if np.isinf(policy).any() or np.isinf(benchmark).any():
        raise ValueError("policy or benchmark contains inf: mark missing bars with NaN, fix broken returns")
    if not bars_per_year > 0:
        raise ValueError(f"bars_per_year must be > 0, got {bars_per_year}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1 (number of bootstrap draws), got {n_boot}")


@dataclass(frozen=True)
class PooledDraws:
    """The pooled Sharpe difference and its bootstrap draws (annualised; mean over asset-periods)."""

    mean: float
    draws: np.ndarray  # (n_boot,)
    n_asset_periods: int


def pooled_sharpe_draws(
    policy: np.ndarray,
    benchmark: np.ndarray,
    period: np.ndarray,
    bars_per_year: float,
    mean_block: float,
    n_boot: int,
    seed: int,
    joint: bool = True,
) -> PooledDraws:
    """Mean over asset-periods of annualised Sharpe(policy) − Sharpe(benchmark), and its stationary-bootstrap draws.

    ``policy`` and ``benchmark`` are (T, A) per-bar net returns, NaN where an asset has no data; ``period`` (T,)
    labels each bar's quarter or fold. A bar counts for an asset only where both its policy and benchmark returns
    are present; within a period an asset uses just those bars (missing bars are dropped, never padded), and an
    asset-period with fewer than 2 of them is left out.

    Draws: per draw and period, one stationary-bootstrap index series over the period's bars (those where any
    asset has data) is applied to every asset together (``joint``), keeping the cross-asset correlation; each
    asset's Sharpe then uses the resampled bars it has data in, and a resample without variation scores 0.
    ``joint=False`` draws per asset, the naive version that overstates the evidence. Deterministic under ``seed``.
    """
    pol = np.asarray(policy, dtype=np.float64)
    ben = np.asarray(benchmark, dtype=np.float64)
    labels = np.asarray(period)
    _validate(pol, ben, labels, bars_per_year, n_boot)
    missing = np.isnan(pol) | np.isnan(ben)
    pol = np.where(missing, np.nan, pol)
    ben = np.where(missing, np.nan, ben)
    ann = math.sqrt(bars_per_year)
    rng = np.random.default_rng(seed)

    point = 0.0
    draws = np.zeros(n_boot)
    n_asset_periods = 0
    for label in np.unique(labels):
        rows = np.flatnonzero((labels == label) & ~missing.all(axis=1))
        assets = np.flatnonzero((~missing[rows]).sum(axis=0) >= 2)
        if assets.size == 0:
            continue
        p, b = pol[np.ix_(rows, assets)].T, ben[np.ix_(rows, assets)].T  # (assets, bars)
        n_asset_periods += assets.size
        point += float(np.sum(_sharpe_ignoring_nan(p, ann) - _sharpe_ignoring_nan(b, ann)))
        shared = stationary_bootstrap_indices(len(rows), mean_block, n_boot, rng) if joint else None
        for a in range(assets.size):
            idx = shared if shared is not None else stationary_bootstrap_indices(len(rows), mean_block, n_boot, rng)
            draws += _sharpe_ignoring_nan(p[a][idx], ann) - _sharpe_ignoring_nan(b[a][idx], ann)
    if n_asset_periods == 0:
        raise ValueError("no asset-period has 2 or more bars with both policy and benchmark returns")
    return PooledDraws(point / n_asset_periods, draws / n_asset_periods, n_asset_periods)


def pooled_sharpe_difference(
    policy: np.ndarray,
    benchmark: np.ndarray,
    period: np.ndarray,
    bars_per_year: float,
    mean_block: float,
    n_boot: int,
    seed: int,
    joint: bool = True,
) -> dict[str, float]:
    """:func:`pooled_sharpe_draws` summarised: the mean, its 95% percentile interval and ``p_value``, the
    one-sided share of draws <= 0."""
    pooled = pooled_sharpe_draws(policy, benchmark, period, bars_per_year, mean_block, n_boot, seed, joint)
    low, high = np.quantile(pooled.draws, [ALPHA / 2.0, 1.0 - ALPHA / 2.0])
    return {
        "mean": pooled.mean,
        "ci_low": float(low),
        "ci_high": float(high),
        "n_asset_periods": float(pooled.n_asset_periods),
        "n_boot": float(n_boot),
        "p_value": float(np.mean(pooled.draws <= 0.0)),
    }


def minimum_detectable_difference(draws: np.ndarray, size: float = 0.05, power: float = 0.80) -> float:
    """The smallest true difference a one-sided test of level ``size`` detects with probability ``power``, from the
    bootstrap draws of the estimate: q(1 − size) − q(1 − power) of the draws around their mean.

    The test rejects when the estimate exceeds the (1 − size) quantile of its null spread; a true difference δ
    shifts that spread by δ (a location shift, the bootstrap's own assumption), so the power is P(δ + e > q(1 −
    size)) and equals ``power`` at δ = q(1 − size) − q(1 − power). For normal draws with standard deviation σ this
    is (z(1 − size) + z(power))·σ = 2.49σ at 5% and 80%.
    """
    d = np.asarray(draws, dtype=float)
    if d.ndim != 1 or d.size < 2 or not np.isfinite(d).all():
        raise ValueError(f"draws must be 2 or more finite bootstrap values, got shape {d.shape}")
    if not (0.0 < size < 1.0 and 0.0 < power < 1.0 and size < power):
        raise ValueError(f"need 0 < size < power < 1, got size {size}, power {power}")
    centred = d - d.mean()
    high, low = np.quantile(centred, [1.0 - size, 1.0 - power])
    return float(high - low)
