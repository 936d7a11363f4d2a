"""Source bars -> N-minute bars, clock-aligned to the Unix epoch, incomplete buckets dropped and counted.

Bucket ``k`` holds the source bars whose open time lies in ``[k*tf, (k+1)*tf)`` (ms since the epoch) and is stamped
with its own open time ``k*tf``, so a 30-minute bar always spans :00-:30 or :30-:00 whatever the data's first bar.
A bucket missing any source bar is dropped, never filled: a half-empty bar would carry a wrong range and volume, and
the gap it leaves is what the split stage sees and refuses to train across.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from diffquant.data.contracts import MINUTE_MS, OPTIONAL_BAR_COLUMNS, from_ms, to_ms
from diffquant.errors import ConfigError, DataError

MAX_TIMEFRAME_MINUTES = 1440  # the range params.yaml accepts for data.timeframe_minutes


@dataclass(frozen=True)
class AggregateStats:
    """What aggregation kept and dropped; ``first_dropped`` lists the open times of the first dropped buckets."""

    source_minutes: int
    timeframe_minutes: int
    source_bars: int
    buckets_complete: int
    buckets_dropped: int
    first_dropped: list[str]


def check_grid(ms: np.ndarray, minutes: int, where: str, advice: str) -> None:
    """Stamps must increase and sit on the ``minutes`` grid counted from the epoch; ``DataError`` otherwise."""
    bad = np.r_[False, np.diff(ms) <= 0] | (ms % (minutes * MINUTE_MS) != 0)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise DataError(
            f"{where}: open_time at row(s) {rows} is not on the {minutes}-minute grid (whole multiples of "
            f"{minutes} min since 1970-01-01 00:00 UTC, increasing); {advice}"
        )


def check_timeframe(source_minutes: int, target_minutes: int) -> None:
    """A bucket must be a whole number of source bars, else 'complete' has no meaning."""
    if target_minutes % source_minutes == 0 and target_minutes >= source_minutes:
        return
    allowed = range(source_minutes, MAX_TIMEFRAME_MINUTES + 1, source_minutes)
    shown = ", ".join(str(m) for m in allowed[:8]) + (", ..." if len(allowed) > 8 else "")
    raise ConfigError(
        f"data.timeframe_minutes ({target_minutes}) is not a multiple of the source resolution "
        f"({source_minutes} min); allowed values: multiples of {source_minutes} up to {MAX_TIMEFRAME_MINUTES} "
        f"({shown})"
    )


def aggregate(
    bars: pd.DataFrame, source_minutes: int, target_minutes: int, *, show_dropped: int = 5
) -> tuple[pd.DataFrame, AggregateStats]:
    """Aggregate canonical bars (open-time stamps) to ``target_minutes``.

    open = first, high = max, low = min, close = last, volume (and num_trades if present) = sum. Source stamps must
    sit on the source grid (a multiple of ``source_minutes`` since the epoch): with strictly increasing, aligned
    stamps a bucket is complete exactly when it holds ``target / source`` bars, so counting is enough.

    Raises ``ConfigError`` when ``target_minutes`` is not a multiple of ``source_minutes`` and ``DataError`` when a
    stamp is off the source grid or there are no bars.
    """
    check_timeframe(source_minutes, target_minutes)
    if bars.empty:
        raise DataError("bars: no rows to aggregate; check the download stage's output")
    ms = to_ms(bars["open_time"])
    check_grid(ms, source_minutes, "bars", "check data.stamp / the source's stamp convention")
    value_cols = ["open", "high", "low", "close", "volume", *[c for c in OPTIONAL_BAR_COLUMNS if c in bars.columns]]
    if target_minutes == source_minutes:
        stats = AggregateStats(source_minutes, target_minutes, len(bars), len(bars), 0, [])
        return bars[["open_time", *value_cols]].reset_index(drop=True), stats

    tf_ms = target_minutes * MINUTE_MS
    bucket, starts, ends, complete = _buckets(ms, source_minutes, target_minutes)
    out = {"open_time": from_ms(bucket[starts][complete] * tf_ms)}
    for col in value_cols:
        out[col] = _reduce(col, bars[col].to_numpy(dtype=np.float64), starts, ends)[complete]
    dropped_ms = bucket[starts][~complete][:show_dropped] * tf_ms
    stats = AggregateStats(
        source_minutes=source_minutes,
        timeframe_minutes=target_minutes,
        source_bars=len(ms),
        buckets_complete=int(complete.sum()),
        buckets_dropped=int((~complete).sum()),
        first_dropped=[t.isoformat() for t in from_ms(dropped_ms)],
    )
    return pd.DataFrame(out), stats


def aggregate_columns(
    columns: pd.DataFrame, how: dict[str, str], source_minutes: int, target_minutes: int
) -> pd.DataFrame:
    """The user's columns (``open_time`` + values, the rows of their bars) at ``target_minutes``, by the buckets
    :func:`aggregate` keeps (complete ones): per column its ``how``, ``last`` (a level) or ``sum`` (a flow)."""
    check_timeframe(source_minutes, target_minutes)
    ms = to_ms(columns["open_time"])
    check_grid(ms, source_minutes, "user columns", "they must sit on their bars' stamps")
    names = [c for c in columns.columns if c != "open_time"]
    if target_minutes == source_minutes:
        return columns[["open_time", *names]].reset_index(drop=True)
    bucket, starts, ends, complete = _buckets(ms, source_minutes, target_minutes)
    out = {"open_time": from_ms(bucket[starts][complete] * target_minutes * MINUTE_MS)}
    for col in names:
        values = columns[col].to_numpy(dtype=np.float64)
        out[col] = (values[ends] if how[col] == "last" else np.add.reduceat(values, starts))[complete]
    return pd.DataFrame(out)


def _buckets(
    ms: np.ndarray, source_minutes: int, target_minutes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each row's bucket, the first and last row of each bucket, and which buckets are complete."""
    bucket = ms // (target_minutes * MINUTE_MS)
    starts = np.flatnonzero(np.diff(bucket, prepend=bucket[:1] - 1))  # first row of each bucket
    ends = np.r_[starts[1:], len(ms)] - 1
    complete = ends - starts + 1 == target_minutes // source_minutes
    return bucket, starts, ends, complete


def _reduce(col: str, values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """One value per bucket; ``starts``/``ends`` are the first and last row of each bucket."""
    if col == "open":
        return values[starts]
    if col == "close":
        return values[ends]
    if col == "high":
        return np.maximum.reduceat(values, starts)
    if col == "low":
        return np.minimum.reduceat(values, starts)
    return np.add.reduceat(values, starts)  # volume, num_trades
