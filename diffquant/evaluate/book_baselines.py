"""A book's rule baselines, as executed weights (N, A) for :func:`~diffquant.evaluate.book.walk_forward_book`.

Each decides at a slot's close from the assets' own bars up to it, holds a gross exposure of min(1, leverage), and
(but 1/N) rebalances once a week, at the first slot of each UTC week (Monday 00:00) and at its first decidable slot.
``lookback`` is in each asset's own bars; the studies use window.context - 1, the returns inside the policy's window,
so no rule sees more history than the policy. A rule is flat until it can decide (as hysteresis makes the policy
before its first full window). Weights are held as fractions of equity between rebalances, as the
simulator prices every book (the drift of a buy-and-hold is not charged as a trade, for the policy neither).
"""

from __future__ import annotations

import numpy as np

from diffquant.evaluate.book import BookSeries

WEEK_MS = 7 * 24 * 3_600_000
MONDAY_MS = 4 * 24 * 3_600_000  # the Unix epoch is a Thursday: weeks counted from here start on Mondays


def equal_weight(book: BookSeries, leverage: float) -> np.ndarray:
    """1/N: every asset with a bar at the slot holds min(1, L) / (their number)."""
    have = book.rows >= 0
    return have * min(1.0, leverage) / have.sum(axis=1, keepdims=True).clip(min=1)


def _past(book: BookSeries, lookback: int) -> tuple[np.ndarray, np.ndarray]:
    """Per slot and asset, the last ``lookback`` simple returns of its own bars (N, A, lookback) and whether it has
    them all (N, A); a return across the asset's gap counts as 0, as the engine earns it."""
    n, n_assets = book.rows.shape
    window = np.full((n, n_assets, lookback), np.nan)
    for a, s in enumerate(book.assets):
        r = np.r_[0.0, np.asarray(s.close[1:], dtype=np.float64) / np.asarray(s.close[:-1], dtype=np.float64) - 1.0]
        r[np.asarray(s.gap_before)] = 0.0
        for slot in np.flatnonzero(book.rows[:, a] >= lookback):
            row = book.rows[slot, a]
            window[slot, a] = r[row - lookback + 1 : row + 1]
    return window, np.isfinite(window).all(axis=2)


def _weekly(book: BookSeries, target: np.ndarray, ready: np.ndarray) -> np.ndarray:
    """Targets (N, A) held from each rebalancing slot to the next; flat before the first slot any asset is ready."""
    week = (book.open_time + int(book.assets[0].timeframe_ms) - MONDAY_MS) // WEEK_MS  # of each slot's close
    out = np.zeros(target.shape)
    current = None
    for t in range(len(target)):
        first = current is None and ready[t].any()
        if first or (current is not None and week[t] != week[t - 1]):
            current = target[t]
        if current is not None:
            out[t] = current
    return out


def inverse_volatility(book: BookSeries, lookback: int, leverage: float) -> np.ndarray:
    """Long only, w_i proportional to 1 / std of its last ``lookback`` returns, summing to min(1, L); weekly."""
    window, ready = _past(book, lookback)
    vol = np.where(ready, np.nan_to_num(window).std(axis=2), np.nan)
    inv = np.where(ready & (vol > 0), 1.0 / np.where(vol > 0, vol, 1.0), 0.0)
    total = inv.sum(axis=1, keepdims=True)
    target = np.where(total > 0, inv * min(1.0, leverage) / np.where(total > 0, total, 1.0), 0.0)
    return _weekly(book, target, ready)


def cross_sectional_momentum(book: BookSeries, lookback: int, leverage: float) -> np.ndarray:
    """Long the assets whose last ``lookback``-bar return is above the cross-sectional median, short those below,
    equal weights with a gross exposure of min(1, L); weekly."""
    window, ready = _past(book, lookback)
    past = np.where(ready, np.prod(1.0 + np.nan_to_num(window), axis=2) - 1.0, np.nan)
    with np.errstate(all="ignore"):
        median = np.nanmedian(np.where(ready.any(axis=1, keepdims=True), past, 0.0), axis=1, keepdims=True)
    side = np.where(ready, np.sign(past - median), 0.0)
    count = np.abs(side).sum(axis=1, keepdims=True)
    target = np.where(count > 0, side * min(1.0, leverage) / np.where(count > 0, count, 1.0), 0.0)
    return _weekly(book, target, ready)
