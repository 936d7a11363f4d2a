"""A portfolio's training episodes: every asset's train series cut into windows on one clock.

The single-asset samples start every ``window.stride`` rows of one asset; a book needs its assets' windows to start
at the same time. So the episodes start every ``stride`` bars of time from the first train bar of any asset, and an
asset is present in an episode when it has all ctx + H bars of it with no gap; otherwise it is masked (``present``
False, NaN features, zero returns and funding), never padded with made-up bars. An episode with no asset present is
not a sample. On gap-free data starting together this is each asset's own sample grid, so one asset gives its
single-asset episodes exactly (tested).

At a decision cadence of P bars (``EpisodeExecution.period``) an episode holds ctx + H P bars, its decisions fall on
the clock's decision bars (``sim.execution.decision_mask``), and episodes start every ``stride`` decisions (stride
x P bars): horizon and stride count decisions. A single asset's episodes at such a cadence are cut the same way,
from its train series (``clock_episodes``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from diffquant.config import WindowConfig
from diffquant.data.splits import Series
from diffquant.sim.simulator import bar_returns
from diffquant.train.episodes import EVERY_BAR, EpisodeBatch, EpisodeExecution, context_volatility


def book_episodes(
    series: Sequence[Series], window: WindowConfig, execution: EpisodeExecution = EVERY_BAR
) -> EpisodeBatch:
    """Train series of A assets (same timeframe and features) -> episodes (B, ctx + H P, A, F) with ``present``."""
    tf = series[0].timeframe_ms
    ctx, period = window.context, execution.period
    length = execution.length(ctx, window.horizon)
    first = min(int(s.open_time[0]) for s in series)
    last = max(int(s.open_time[-1]) for s in series)
    first += -(first + ctx * tf) % (period * tf)  # the first decision (bar ctx - 1) on the clock's decision bars
    starts = np.arange(first, last - (length - 1) * tf + 1, window.stride * period * tf, dtype=np.int64)  # (S,)
    rows = np.full((len(starts), len(series)), -1)  # (S, A) the first row of each asset's window, -1 if absent
    for a, s in enumerate(series):
        i = np.minimum(np.searchsorted(s.open_time, starts), len(s.open_time) - 1)
        end = np.minimum(i + length - 1, len(s.open_time) - 1)
        whole = (s.open_time[i] == starts) & (s.open_time[end] - starts == (length - 1) * tf)  # no gap inside
        rows[whole, a] = i[whole]
    rows = rows[(rows >= 0).any(axis=1)]
    present = rows >= 0
    n_feat = series[0].features.shape[1]
    features = np.full((len(rows), length, len(series), n_feat), np.nan, dtype=np.float32)
    close = np.ones((len(rows), length, len(series)))  # absent: a constant price, so a zero return
    funding = np.zeros((len(rows), length, len(series)))
    span = np.arange(length)
    for a, s in enumerate(series):
        b = np.flatnonzero(present[:, a])
        idx = rows[b, a][:, None] + span  # (S_a, L)
        features[b, :, a] = s.features[idx]
        close[b, :, a] = s.close[idx]
        funding[b, :, a] = s.funding[idx]
    returns = bar_returns(close[:, ctx - 1 :], time_axis=1)  # (S, H P, A) scored bars ctx ..
    vol = np.stack([context_volatility(close[:, :, a], ctx) for a in range(len(series))], axis=1)  # (S, A)
    book_vol = (vol * present).sum(axis=1) / present.sum(axis=1)  # the mean over the assets present
    return EpisodeBatch(
        torch.as_tensor(features),
        torch.as_tensor(returns, dtype=torch.float32),
        torch.as_tensor(funding[:, ctx:], dtype=torch.float32),
        torch.as_tensor(book_vol, dtype=torch.float32),
        torch.as_tensor(present),
        **execution.tensors(close, ctx, present),
    )


def clock_episodes(series: Sequence[Series], window: WindowConfig, execution: EpisodeExecution) -> EpisodeBatch:
    """One asset's episodes at the execution's cadence, each asset's cut from its own train series on the clock
    (``book_episodes`` of that asset alone), pooled: features (B, ctx + H P, F), returns (B, H P)."""
    parts = []
    for s in series:
        one = book_episodes([s], window, execution)
        parts.append(
            EpisodeBatch(
                one.features[:, :, 0],
                one.returns[..., 0],
                one.funding[..., 0],
                one.context_vol,
                risk=None if one.risk is None else one.risk[..., 0, 0],
            )
        )
    out = parts[0]
    for part in parts[1:]:
        out = out.cat(part)
    return out
