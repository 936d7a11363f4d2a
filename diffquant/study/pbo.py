"""Probability of Backtest Overfitting (PBO) by combinatorially symmetric cross-validation (CSCV).

Reference: Bailey, D. H., Borwein, J. M., López de Prado, M. and Zhu, Q. J. (2015), "The Probability of Backtest
Overfitting", Journal of Computational Finance 20(4).

Picking the best of N configurations on one half of the history and checking where it lands on the other half, over
every way of halving the history, estimates how often the in-sample winner is below the out-of-sample median: a
PBO near 0.5 means the selection carries no information, near 0 that the winner generalises.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

# Sharpe from per-block sums: var = E[x²] − E[x]² loses ~1e-16 of E[x²] to cancellation, so a variance below this
# fraction of E[x²] is a series that does not vary (Sharpe 0), not a real one.
_CANCELLATION_RTOL = 1e-12


@dataclass(frozen=True, eq=False)  # eq=False: dataclass equality on an ndarray field is ambiguous
class PboResult:
    """PBO and the logit of the in-sample winner's out-of-sample relative rank, one per combination."""

    pbo: float
    logits: np.ndarray
    n_combinations: int
    n_configurations: int
    n_blocks: int

    def to_dict(self) -> dict[str, float | int]:
        """JSON-friendly summary (the logits reduced to their median)."""
        return {
            "pbo": self.pbo,
            "median_logit": float(np.median(self.logits)),
            "n_combinations": self.n_combinations,
            "n_configurations": self.n_configurations,
            "n_blocks": self.n_blocks,
        }


def _validate(returns: np.ndarray, n_blocks: int) -> np.ndarray:
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"returns must be 2-D (T periods, N configurations), got shape {r.shape}")
    t, n = r.shape
    if n < 2:
        raise ValueError(f"returns has {n} configuration column(s): PBO needs at least 2 to select among")
    if n_blocks < 2 or n_blocks % 2:
        raise ValueError(f"n_blocks must be even and >= 2 (the history is split in halves), got {n_blocks}")
    if t < 2 * n_blocks:
        raise ValueError(f"returns has {t} rows, fewer than 2 * n_blocks = {2 * n_blocks}: use fewer n_blocks")
    if not np.isfinite(r).all():
        raise ValueError("returns contains NaN or inf: drop or align those periods for every configuration first")
    return r


def _sharpe_from_sums(total: np.ndarray, total_sq: np.ndarray, count: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Per-period Sharpe (population std) of series whose values minus ``shift`` sum to ``total`` / ``total_sq``."""
    mean = total / count
    mean_sq = total_sq / count
    var = mean_sq - mean**2
    varies = var > _CANCELLATION_RTOL * mean_sq
    return np.where(varies, (mean + shift) / np.sqrt(np.where(varies, var, 1.0)), 0.0)


def probability_of_backtest_overfitting(returns: np.ndarray, n_blocks: int = 16) -> PboResult:
    """PBO of choosing the best-Sharpe column of ``returns`` (T periods, N configurations), by CSCV.

    The rows are cut into ``n_blocks`` contiguous, near-equal blocks; each of the C(n_blocks, n_blocks/2) choices
    of half the blocks is in-sample once, the other half out-of-sample. The in-sample winner (highest per-period
    Sharpe mean/std, population std, 0 for a series that does not vary; a tie goes to the lowest column) gets its
    out-of-sample rank among the N (1 = worst, ties averaged), ω = rank/(N+1) and logit ln(ω/(1−ω)).
    PBO = share of logits <= 0.

    Vectorised through per-block sums of the values and their squares (centred per column, which keeps the
    variance free of cancellation), so the cost does not grow with T per combination.
    """
    r = _validate(returns, n_blocks)
    n_config = r.shape[1]
    shift = r.mean(axis=0)
    x = r - shift
    starts = np.array([block[0] for block in np.array_split(np.arange(len(r)), n_blocks)])
    block_sum = np.add.reduceat(x, starts, axis=0)
    block_sq = np.add.reduceat(x**2, starts, axis=0)
    block_len = np.diff(np.r_[starts, len(r)]).astype(np.float64)

    chosen = np.array(list(combinations(range(n_blocks), n_blocks // 2)))
    in_sample = np.zeros((len(chosen), n_blocks))
    np.put_along_axis(in_sample, chosen, 1.0, axis=1)
    out_sample = 1.0 - in_sample

    def sharpe(mask: np.ndarray) -> np.ndarray:
        return _sharpe_from_sums(mask @ block_sum, mask @ block_sq, (mask @ block_len)[:, None], shift)

    best = np.argmax(sharpe(in_sample), axis=1)
    oos = sharpe(out_sample)
    oos_best = np.take_along_axis(oos, best[:, None], axis=1)
    rank = np.sum(oos < oos_best, axis=1) + (np.sum(oos == oos_best, axis=1) + 1) / 2.0
    omega = rank / (n_config + 1)
    logits = np.log(omega / (1.0 - omega))
    return PboResult(
        pbo=float(np.mean(logits <= 0.0)),
        logits=logits,
        n_combinations=len(logits),
        n_configurations=n_config,
        n_blocks=n_blocks,
    )
