"""Trailing windows that every feature family computes its rolling statistics from.

Each statistic at row t is computed from the window of rows ``t-w+1 .. t`` alone (no running sums), and the first
rows use the rows that exist (an expanding start). So a table that starts later has bit for bit the same value on
every row whose window lies inside it: the warm-up each family declares (``diffquant.data.families``).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def trailing_windows(values: np.ndarray, window: int) -> np.ndarray:
    """(N,) -> (N, window) view: the ``window`` values ending at (and including) each row, NaN before the first."""
    return sliding_window_view(np.concatenate([np.full(window - 1, np.nan), values]), window)


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    return np.nanmean(trailing_windows(values, window), axis=1)


def trailing_zscore(values: np.ndarray, window: int, floor: float = 0.0) -> np.ndarray:
    """(x_t - mean) / max(std, floor) over the trailing window (population std); with ``floor`` 0, 0 where the
    window is constant."""
    w = trailing_windows(values, window)
    mean = np.nanmean(w, axis=1)
    std = np.nanstd(w, axis=1)
    deviation = values - mean
    scale = np.maximum(std, floor)
    return np.divide(deviation, scale, out=np.zeros_like(deviation), where=scale > 0)


def trailing_sum(values: np.ndarray, window: int) -> np.ndarray:
    return np.nansum(trailing_windows(values, window), axis=1)
