"""A book's rule baselines, as executed weights (N, A) for :func:`~diffquant.evaluate.book.walk_forward_book`.

Each decides at a slot's close from the assets' own bars up to it, holds a gross exposure of min(1, leverage), and
(but 1/N) rebalances once a week, at the first slot of each UTC week (Monday 00:00) and at its first decidable slot;
the funding rules rebalance at the funding stamps instead. ``lookback`` is in each asset's own bars; the studies use
window.context - 1, the returns inside the policy's window, so no rule sees more history than the policy. A rule is
flat until it can decide (as hysteresis makes the policy before its first full window). Weights are held as
fractions of equity between rebalances, as the simulator prices every book (the drift of a buy-and-hold is not
charged as a trade, for the policy neither).

The funding rules read the funding each asset paid over the last funding interval up to the decision's close
(``funding_paid``: settlements known at that close, nothing later): cross-sectional carry is long the k lowest and
short the k highest, the funding-extremes rule is short an asset whose funding is at or above +threshold and long
one at or below -threshold. ``priced_with`` says under which execution each baseline trades; the volatility-targeted
1/N is 1/N's weights traded with the volatility target.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from diffquant.config import BaselineConfig, SimConfig
from diffquant.evaluate.book import BookSeries
from diffquant.sim.execution import decision_mask, hold_between

VOL_TARGETED = ("equal_weight_vt",)  # book baselines traded with the volatility target (``priced_with``)

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


def funding_paid(book: BookSeries, hours: int) -> np.ndarray:
    """(N, A) the funding rate each asset settled over the last ``hours`` up to each slot's close (the sum over its
    slots in (t - interval, t]: one settlement on an 8-hour schedule, two on a 4-hour one); NaN where the asset has
    no bar at the slot or fewer bars than the interval holds. Causal: a settlement is known at the close of the bar
    that holds it."""
    per = interval_slots(book, hours)
    funding = np.r_[np.zeros((per - 1, len(book.assets))), book.funding]  # zeros before the first slot
    paid = np.lib.stride_tricks.sliding_window_view(funding, per, axis=0).sum(axis=-1)  # each window on its own
    return np.where(book.rows >= per - 1, paid, np.nan)


def funding_stamps(book: BookSeries, hours: int) -> np.ndarray:
    """(N,) bool: the slots closing at a funding stamp (every ``hours`` from 00:00 UTC), where the funding rules
    rebalance (the clock's decision bars of that period)."""
    return decision_mask(book.open_time, book.timeframe_ms, interval_slots(book, hours))


def interval_slots(book: BookSeries, hours: int) -> int:
    """Slots in a funding interval of ``hours``; 1 for bars as long as it or longer (every bar holds a stamp)."""
    return max(1, hours * 60 * 60_000 // book.timeframe_ms)


def cross_sectional_carry(book: BookSeries, k: int, leverage: float, hours: int) -> np.ndarray:
    """Long the ``k`` assets with the lowest funding paid over the last interval, short the ``k`` highest, equal
    weights with a gross exposure of min(1, L), rebalanced at the funding stamps; with fewer than 2k assets ready,
    the k' = half of them (ties broken by the assets' order). Dollar-neutral by construction."""
    paid, stamps = funding_paid(book, hours), funding_stamps(book, hours)
    gross = min(1.0, leverage)
    target = np.zeros(paid.shape)
    for t in np.flatnonzero(stamps):
        ready = np.flatnonzero(np.isfinite(paid[t]))
        m = min(k, len(ready) // 2)
        if m == 0:
            continue
        order = ready[np.argsort(paid[t, ready], kind="stable")]
        target[t, order[:m]] = gross / (2 * m)
        target[t, order[-m:]] = -gross / (2 * m)
    return hold_between(target, stamps, before=0.0)


def funding_extremes(book: BookSeries, threshold: float, leverage: float, hours: int) -> np.ndarray:
    """Each ready asset at min(1, L) / (the number ready): short when the funding paid over the last interval is at
    or above ``threshold``, long at or below -``threshold``, flat between; rebalanced at the funding stamps."""
    paid, stamps = funding_paid(book, hours), funding_stamps(book, hours)
    ready = np.isfinite(paid)
    count = ready.sum(axis=1, keepdims=True)
    side = np.where(paid >= threshold, -1.0, 0.0) + np.where(paid <= -threshold, 1.0, 0.0)
    target = np.where(ready & (count > 0), side * min(1.0, leverage) / np.maximum(count, 1), 0.0)
    return hold_between(target, stamps, before=0.0)


def vol_target_of(sim: SimConfig, baselines: BaselineConfig) -> float:
    """The volatility-targeted baselines' annual target: the policy's (``sim.vol_target``) when it has one, so that
    both are scaled alike; else ``baselines.vol_target``."""
    return sim.vol_target or baselines.vol_target


def priced_with(name: str, sim: SimConfig, baselines: BaselineConfig) -> SimConfig:
    """The execution a book baseline trades under: its own targets at the study's cadence and costs, without the
    policy's band and volatility target (``SimConfig.plain``); the volatility-targeted ones with the target."""
    if name in VOL_TARGETED:
        return dataclasses.replace(sim.plain, vol_target=vol_target_of(sim, baselines))
    return sim.plain
