"""What each feature channel says about the returns the policy can earn, before any training: rank ICs.

For a channel x and the forward log return y over the next h hours of the position a decision at bar t takes
(y_t = log(c_{t+L+h'} / c_{t+L}), L = ``sim.execution_lag_bars``, h' = h in bars), over the assets of a universe:

- **pooled time-series rank IC**: within each asset, x and y are ranked over its own history (average ranks for
  ties) and centred; the IC is the correlation of those ranks pooled over every (asset, bar) pair,
  sum(rx·ry) / sqrt(sum(rx²)·sum(ry²)). It asks: when this asset's channel is high relative to its own history, is
  its return high? (what a single-asset policy pooled over assets can use);
- **cross-sectional rank IC**: at each bar, the Spearman correlation of x and y across the assets that have both
  (three or more), averaged over bars. It asks: are the assets whose channel is high the ones that outperform? (the
  carry-style question of the funding literature; a portfolio can use it, a single-asset policy only indirectly).

Intervals: a stationary bootstrap over time (mean block ``block_bars``; the same resampled bars for every asset, so
their common moves stay together), 2.5% and 97.5% quantiles. The time-series IC's resamples keep each asset's
full-sample ranks (re-ranking each resample would cost thousands of sorts per channel and changes the ranks only at
the order of 1/n); overlapping forward returns are why the blocks must be much longer than h.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from diffquant.data.contracts import MINUTE_MS, to_ms
from diffquant.data.features import FEATURE_PREFIX, feature_columns
from diffquant.errors import ConfigError
from diffquant.evaluate.stats import stationary_bootstrap_indices

MIN_CROSS_SECTION = 3  # assets at a bar for a cross-sectional rank correlation
BOOT_CHUNK = 100  # resamples built at a time: (chunk, bars) int64 indices stay a few tens of MB


@dataclass(frozen=True)
class Panel:
    """Every asset's feature table on one clock: (T, A) arrays, NaN where an asset has no bar."""

    open_time: np.ndarray  # (T,) Unix ms
    symbols: tuple[str, ...]
    channels: dict[str, np.ndarray]  # name -> (T, A)
    close: np.ndarray  # (T, A)

    @classmethod
    def of(cls, tables: dict[str, pd.DataFrame]) -> Panel:
        """Feature tables (``open_time``, ``close``, ``x_<name>``...) of the same channels -> one panel."""
        names = [feature_columns(t) for t in tables.values()]
        if any(n != names[0] for n in names):
            raise ConfigError(f"information: the assets' feature tables have different channels: {names}")
        clock = np.unique(np.concatenate([to_ms(t["open_time"]) for t in tables.values()]))
        rows = {s: np.searchsorted(clock, to_ms(t["open_time"])) for s, t in tables.items()}

        def on_clock(column: str) -> np.ndarray:
            out = np.full((len(clock), len(tables)), np.nan)
            for a, (s, t) in enumerate(tables.items()):
                out[rows[s], a] = t[column].to_numpy(np.float64)
            return out

        channels = {n: on_clock(FEATURE_PREFIX + n) for n in names[0]}
        return cls(clock, tuple(tables), channels, on_clock("close"))

    def forward_returns(self, hours: float, timeframe_minutes: int, lag_bars: int) -> np.ndarray:
        """(T, A) log return from the close ``lag_bars`` after each bar to ``hours`` later (NaN: a bar is absent)."""
        bars = hours * 60 / timeframe_minutes
        if bars != int(bars) or bars < 1:
            raise ConfigError(f"information: {hours} h is not a whole number of {timeframe_minutes}-minute bars")
        step = timeframe_minutes * MINUTE_MS
        start = self._close_at(self.open_time + lag_bars * step)
        end = self._close_at(self.open_time + (lag_bars + int(bars)) * step)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.log(end / start)

    def _close_at(self, ms: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(self.open_time, ms), len(self.open_time) - 1)
        found = self.open_time[at] == ms
        return np.where(found[:, None], self.close[at], np.nan)


def _centred_ranks(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per column: average ranks of the masked values, centred on their mean; 0 outside the mask."""
    out = np.zeros_like(values)
    for a in range(values.shape[1]):
        m = mask[:, a]
        if m.any():
            r = pd.Series(values[m, a]).rank(method="average").to_numpy()
            out[m, a] = r - r.mean()
    return out


def _row_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(T,) Spearman correlation across the columns of each row where both are finite; NaN below MIN_CROSS_SECTION."""
    mask = np.isfinite(x) & np.isfinite(y)
    rx = pd.DataFrame(np.where(mask, x, np.nan)).rank(axis=1).to_numpy()
    ry = pd.DataFrame(np.where(mask, y, np.nan)).rank(axis=1).to_numpy()
    n = mask.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = rx - np.nanmean(rx, axis=1, keepdims=True)
        cy = ry - np.nanmean(ry, axis=1, keepdims=True)
        num = np.nansum(cx * cy, axis=1)
        den = np.sqrt(np.nansum(cx**2, axis=1) * np.nansum(cy**2, axis=1))
        ic = num / den
    return np.where((n >= MIN_CROSS_SECTION) & (den > 0), ic, np.nan)


@dataclass(frozen=True)
class _Pair:
    """What one channel x horizon needs per bar: the pooled sums of centred ranks, the cross-sectional IC."""

    sxy: np.ndarray
    sxx: np.ndarray
    syy: np.ndarray
    cs: np.ndarray
    pairs: int


def _pair(x: np.ndarray, y: np.ndarray) -> _Pair:
    mask = np.isfinite(x) & np.isfinite(y)
    rx, ry = _centred_ranks(x, mask), _centred_ranks(y, mask)
    return _Pair((rx * ry).sum(1), (rx * rx).sum(1), (ry * ry).sum(1), _row_spearman(x, y), int(mask.sum()))


def _pooled_ic(p: _Pair, rows: np.ndarray | slice) -> np.ndarray | float:
    sxy, sxx, syy = (np.asarray(a[rows]).sum(axis=-1) for a in (p.sxy, p.sxx, p.syy))
    with np.errstate(invalid="ignore", divide="ignore"):
        return sxy / np.sqrt(sxx * syy)


def rank_ic_table(
    panel: Panel,
    horizons_hours: Sequence[float],
    timeframe_minutes: int,
    lag_bars: int,
    *,
    n_boot: int = 1000,
    block_bars: float = 168.0,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per channel and horizon: the pooled time-series and the cross-sectional rank IC with their 95%
    bootstrap intervals, the assets and the (asset, bar) pairs they rest on."""
    pairs = {
        (name, h): _pair(x, panel.forward_returns(h, timeframe_minutes, lag_bars))
        for h in horizons_hours
        for name, x in panel.channels.items()
    }
    rng = np.random.default_rng(seed)
    boots: dict[tuple[str, float], tuple[list[np.ndarray], list[np.ndarray]]] = {k: ([], []) for k in pairs}
    for done in range(0, n_boot, BOOT_CHUNK):
        idx = stationary_bootstrap_indices(len(panel.open_time), block_bars, min(BOOT_CHUNK, n_boot - done), rng)
        for key, p in pairs.items():
            boots[key][0].append(_pooled_ic(p, idx))
            with np.errstate(invalid="ignore"):
                boots[key][1].append(np.nanmean(p.cs[idx], axis=1))
    rows = []
    for (name, h), p in pairs.items():
        ts, cs = (np.concatenate(b) for b in boots[name, h])
        rows.append(
            {
                "channel": name,
                "horizon_h": h,
                "ts_ic": float(_pooled_ic(p, slice(None))),
                "ts_low": float(np.nanquantile(ts, 0.025)),
                "ts_high": float(np.nanquantile(ts, 0.975)),
                "cs_ic": float(np.nanmean(p.cs)),
                "cs_low": float(np.nanquantile(cs, 0.025)),
                "cs_high": float(np.nanquantile(cs, 0.975)),
                "assets": len(panel.symbols),
                "pairs": p.pairs,
            }
        )
    return pd.DataFrame(rows)


def ic_markdown(table: pd.DataFrame) -> str:
    """The table as markdown: one row per channel, the horizons side by side."""
    horizons = sorted(table["horizon_h"].unique())
    head = ["channel"] + [f"{kind} IC, next {h:g} h [95%]" for h in horizons for kind in ("time-series", "cross-sec.")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for channel, rows in table.groupby("channel", sort=False):
        cells = [f"`{channel}`"]
        for h in horizons:
            r = rows[rows["horizon_h"] == h].iloc[0]
            cells += [_interval(r.ts_ic, r.ts_low, r.ts_high), _interval(r.cs_ic, r.cs_low, r.cs_high)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _interval(value: float, low: float, high: float) -> str:
    """``+0.012 [-0.003, +0.027]``, bold when the interval excludes 0; n/a for a channel without variation."""
    if not np.isfinite(value):
        return "n/a"
    text = f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"
    return f"**{text}**" if low > 0 or high < 0 else text


def ic_records(table: pd.DataFrame) -> list[dict[str, object]]:
    """The table's rows for JSON (NaN, a channel without cross-sectional variation, as null)."""
    return [
        {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
        for r in table.to_dict("records")
    ]
