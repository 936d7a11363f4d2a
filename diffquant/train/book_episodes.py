"""A portfolio's training episodes: every asset's train series cut into windows on one clock.

The single-asset samples start every ``window.stride`` rows of one asset; a book needs its assets' windows to start
at the same time. So the episodes start every ``stride`` bars of time from the first train bar of any asset, and an
asset is present in an episode when it has all ctx + H bars of it with no gap; otherwise it is masked (``present``
False, NaN features, zero returns and funding), never padded with made-up bars. An episode with no asset present is
not a sample. On gap-free data starting together this is each asset's own sample grid, so one asset gives its
single-asset episodes exactly (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from diffquant.config import WindowConfig
from diffquant.data.splits import Series
from diffquant.sim.simulator import bar_returns
from diffquant.train.episodes import EpisodeBatch, context_volatility


def book_episodes(series: Sequence[Series], window: WindowConfig) -> EpisodeBatch:
    """Train series of A assets (same timeframe and features) -> episodes (B, ctx + H, A, F) with ``present``."""
    tf = series[0].timeframe_ms
    length, ctx = window.context + window.horizon, window.context
    first = min(int(s.open_time[0]) for s in series)
    last = max(int(s.open_time[-1]) for s in series)
    starts = np.arange(first, last - (length - 1) * tf + 1, window.stride * tf, dtype=np.int64)  # (S,) candidates
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
    returns = bar_returns(close[:, ctx - 1 :], time_axis=1)  # (S, H, A) scored bars ctx ..
    vol = np.stack([context_volatility(close[:, :, a], ctx) for a in range(len(series))], axis=1)  # (S, A)
    book_vol = (vol * present).sum(axis=1) / present.sum(axis=1)  # the mean over the assets present
    return EpisodeBatch(
        torch.as_tensor(features),
        torch.as_tensor(returns, dtype=torch.float32),
        torch.as_tensor(funding[:, ctx:], dtype=torch.float32),
        torch.as_tensor(book_vol, dtype=torch.float32),
        torch.as_tensor(present),
    )
