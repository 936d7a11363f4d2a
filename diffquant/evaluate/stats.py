"""Statistics for judging a backtest's Sharpe ratio: PSR, MinTRL, DSR and stationary-bootstrap confidence intervals.

References:

- Bailey, D. H. and López de Prado, M. (2012), "The Sharpe Ratio Efficient Frontier", Journal of Risk 15(2):
  the Probabilistic Sharpe Ratio (PSR) and the minimum track record length (MinTRL).
- Bailey, D. H. and López de Prado, M. (2014), "The Deflated Sharpe Ratio: Correcting for Selection Bias,
  Backtest Overfitting and Non-Normality", Journal of Portfolio Management 40(5): the expected maximum Sharpe
  under the null and the Deflated Sharpe Ratio (DSR).
- Politis, D. N. and Romano, J. P. (1994), "The Stationary Bootstrap", JASA 89(428).

Units: PSR, MinTRL and DSR work on the per-period (not annualised) Sharpe ratio; the bootstrap CI reports the
annualised one.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from diffquant.evaluate.metrics import sharpe_along_last_axis

EULER_MASCHERONI = 0.5772156649015329
_N01 = NormalDist()
# A std below this fraction of the largest |return| is rounding noise of a constant series: treated as 0.
_ZERO_STD_RTOL = 1e-12


def _moments(returns: np.ndarray) -> tuple[float, int, float, float]:
    """Per-period Sharpe mean/std (ddof=0), sample size, skewness and raw kurtosis of ``returns``."""
    r = np.asarray(returns, dtype=float).ravel()
    n = r.size
    if n < 2:
        raise ValueError(f"need at least 2 returns, got {n}")
    mu = r.mean()
    dev = r - mu
    var = float(np.mean(dev**2))
    if var <= (_ZERO_STD_RTOL * float(np.abs(r).max())) ** 2:
        raise ValueError("returns have zero variance: the Sharpe ratio is undefined")
    sd = math.sqrt(var)
    skew = float(np.mean(dev**3)) / sd**3
    kurt = float(np.mean(dev**4)) / var**2
    return float(mu) / sd, n, skew, kurt


def psr_from_moments(sr: float, n: int, skew: float, kurt: float, benchmark_sr: float = 0.0) -> float:
    """PSR from the moments: Φ((SR − SR*)·√(n−1) / √(1 − γ3·SR + (γ4 − 1)/4·SR²)).

    ``sr`` and ``benchmark_sr`` are per-period Sharpe ratios, ``skew`` is γ3 and ``kurt`` the RAW kurtosis γ4
    (3 for a normal, not the excess kurtosis). Bailey & López de Prado (2012), eq. for PSR.
    """
    if n < 2:
        raise ValueError(f"need n >= 2, got {n}")
    denom = 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr**2
    if denom <= 0.0:
        raise ValueError(f"non-positive variance term {denom} (is kurt the raw kurtosis?)")
    z = (sr - benchmark_sr) * math.sqrt(n - 1) / math.sqrt(denom)
    return _N01.cdf(z)


def probabilistic_sharpe_ratio(returns: np.ndarray, benchmark_sr: float = 0.0) -> float:
    """Probability that the true per-period Sharpe of ``returns`` exceeds ``benchmark_sr``.

    PSR = Φ((SR̂ − SR*)·√(n−1) / √(1 − γ3·SR̂ + (γ4 − 1)/4·SR̂²)), SR̂ = mean/std (population std), γ3 the
    skewness, γ4 the raw kurtosis of the returns. Bailey & López de Prado (2012).
    """
    sr, n, skew, kurt = _moments(returns)
    return psr_from_moments(sr, n, skew, kurt, benchmark_sr)


def minimum_track_record(returns: np.ndarray, confidence: float = 0.95, benchmark_sr: float = 0.0) -> float | None:
    """Minimum track record length, in bars: how many returns like these it takes for the observed per-period
    Sharpe to exceed ``benchmark_sr`` with probability ``confidence`` (the PSR at that length).

    MinTRL = 1 + (1 − γ3·SR̂ + (γ4 − 1)/4·SR̂²)·(z / (SR̂ − SR*))², z = Φ⁻¹(confidence). None when SR̂ <= SR*: no
    length of such a record would make it significant. Bailey & López de Prado (2012), "The Sharpe Ratio Efficient
    Frontier", the minimum track record length.
    """
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    sr, _, skew, kurt = _moments(returns)
    if sr <= benchmark_sr:
        return None
    variance = 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr**2
    return 1.0 + variance * (_N01.inv_cdf(confidence) / (sr - benchmark_sr)) ** 2


def expected_max_sharpe(n_trials: int, sr_variance: float) -> float:
    """Expected maximum Sharpe among ``n_trials`` independent trials whose true Sharpe is 0.

    E[max SR] ≈ √V·((1−γ)·Φ⁻¹(1 − 1/N) + γ·Φ⁻¹(1 − 1/(N·e))), γ the Euler–Mascheroni constant, V the variance
    of the Sharpe ratios across trials (result in the same units as √V). N = 1 gives 0.
    Bailey & López de Prado (2014), eq. (2) (False Strategy Theorem).
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if sr_variance < 0.0:
        raise ValueError(f"sr_variance must be >= 0, got {sr_variance}")
    if n_trials == 1:
        return 0.0
    g = EULER_MASCHERONI
    z = (1.0 - g) * _N01.inv_cdf(1.0 - 1.0 / n_trials) + g * _N01.inv_cdf(1.0 - 1.0 / (n_trials * math.e))
    return math.sqrt(sr_variance) * z


def deflated_sharpe_ratio(returns: np.ndarray, n_trials: int, sr_variance: float) -> float:
    """Deflated Sharpe Ratio: PSR with SR* = expected_max_sharpe(n_trials, sr_variance).

    Everything is per period: ``sr_variance`` must be the variance of the per-period (not annualised) Sharpe
    ratios across the trials; an annualised variance V_a converts as V_a / periods_per_year.
    Bailey & López de Prado (2014), eq. (3).
    """
    return probabilistic_sharpe_ratio(returns, expected_max_sharpe(n_trials, sr_variance))


def stationary_bootstrap_indices(n: int, mean_block: float, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Index matrix (n_boot, n) of the stationary bootstrap (Politis & Romano, 1994).

    Each row starts at a uniform index; each next index continues the block (i + 1 mod n) with probability
    1 − 1/mean_block, else jumps to a new uniform index, so block lengths are geometric with mean ``mean_block``.
    Vectorised: index[t] = (start of the current block + t − position where that block began) mod n.
    """
    if n < 1 or n_boot < 1:
        raise ValueError(f"need n >= 1 and n_boot >= 1, got n={n}, n_boot={n_boot}")
    if mean_block < 1.0:
        raise ValueError(f"mean_block must be >= 1, got {mean_block}")
    p = 1.0 / mean_block
    starts = rng.integers(0, n, size=(n_boot, n))
    jump = rng.random((n_boot, n)) < p
    jump[:, 0] = True
    pos = np.arange(n)
    block_pos = np.maximum.accumulate(np.where(jump, pos, 0), axis=1)
    block_start = np.take_along_axis(starts, block_pos, axis=1)
    return (block_start + (pos - block_pos)) % n


def bootstrap_sharpe_ci(
    returns: np.ndarray,
    periods_per_year: float,
    mean_block: float,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    benchmark: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile (1 − alpha) CI of the annualised Sharpe of ``returns`` by stationary bootstrap.

    Sharpe = mean/std·√periods_per_year (population std; 0 when std is 0). With ``benchmark`` (same length),
    the CI is of Sharpe(returns) − Sharpe(benchmark), both computed on the same resampled indices (paired).
    ``mean_block`` must be >= 1; to keep intraday dependence inside the blocks use at least one day of bars
    (48 at 30 minutes).
    """
    r = np.asarray(returns, dtype=float).ravel()
    if r.size < 2:
        raise ValueError(f"need at least 2 returns, got {r.size}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    idx = stationary_bootstrap_indices(r.size, mean_block, n_boot, np.random.default_rng(seed))
    stat = sharpe_along_last_axis(r[idx], math.sqrt(periods_per_year))
    if benchmark is not None:
        b = np.asarray(benchmark, dtype=float).ravel()
        if b.shape != r.shape:
            raise ValueError(f"benchmark has {b.size} values, returns {r.size}")
        stat = stat - sharpe_along_last_axis(b[idx], math.sqrt(periods_per_year))
    lo, hi = np.quantile(stat, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def null_max_sharpe(trial_sharpes: np.ndarray, n_trials: int, periods_per_year: float) -> float:
    """SR0 for the DSR, per period: the best Sharpe ``n_trials`` skill-less trials are expected to show, with their
    spread estimated from the annualised Sharpe ratios ``trial_sharpes`` of the trials actually run."""
    s = np.asarray(trial_sharpes, dtype=float)
    s = s[np.isfinite(s)]
    variance = float(np.var(s, ddof=1)) / periods_per_year if s.size > 1 else 0.0
    return expected_max_sharpe(n_trials, variance)


def significance(
    net: np.ndarray,
    benchmark_net: np.ndarray,
    periods_per_year: float,
    mean_block: float,
    seed: int = 0,
    null_sharpe: float | None = None,
) -> dict[str, float | None]:
    """PSR against zero, DSR against ``null_sharpe`` (per period, from :func:`null_max_sharpe`) and 95%
    stationary-bootstrap CIs of the annual Sharpe and of Sharpe minus the benchmark's.

    ``mean_block`` should span at least a day of bars. PSR and DSR are None for a series without variation.
    """
    try:
        psr: float | None = probabilistic_sharpe_ratio(net)
        dsr = None if null_sharpe is None else probabilistic_sharpe_ratio(net, null_sharpe)
    except ValueError:
        psr = dsr = None
    low, high = bootstrap_sharpe_ci(net, periods_per_year, mean_block, seed=seed)
    d_low, d_high = bootstrap_sharpe_ci(net, periods_per_year, mean_block, seed=seed, benchmark=benchmark_net)
    return {
        "psr": psr,
        "dsr": dsr,
        "sharpe_ci_low": low,
        "sharpe_ci_high": high,
        "sharpe_minus_benchmark_ci_low": d_low,
        "sharpe_minus_benchmark_ci_high": d_high,
    }


def distribution(values: list[float]) -> dict[str, float]:
    """Median, quartiles, min, max, mean and std (ddof 1) of a metric over seeds."""
    v = np.asarray(values, dtype=float)
    q25, median, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return {
        "n": int(v.size),
        "median": float(median),
        "q25": float(q25),
        "q75": float(q75),
        "min": float(v.min()),
        "max": float(v.max()),
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
    }
