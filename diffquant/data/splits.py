"""Feature table -> training samples and continuous evaluation series (``data_source/split/*.npz``).

Training samples are windows of ``context + horizon`` consecutive bars taken every ``stride`` rows from the first
train bar, kept only when the whole window lies in ``[train_start, val_start)`` and has no missing bar inside: a
sample never crosses a gap and never reaches into val. (Upstream assigned a sample by its first context bar, so its
last train samples ran up to 98 bars into val, docs/upstream.md "Defects fixed" item 7: 910 samples on the
shipped 30-minute data, where whole-window samples number 907, see tests/data/test_splits.py.)

An evaluation series (val, test, backtest) is every bar of its quarter ``[start, next start)`` preceded by the
``context + execution_lag_bars`` bars just before the quarter: exactly what the decision for the quarter's first bar
needs (docs/design_notes.md). Gaps stay in the series and are flagged by ``Series.gap_before``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd

from diffquant.config import SplitConfig, WindowConfig
from diffquant.data.aggregate import check_grid
from diffquant.data.contracts import MINUTE_MS, from_ms, to_ms
from diffquant.data.features import FEATURE_PREFIX, feature_columns
from diffquant.errors import ConfigError, DataError
from diffquant.io import atomic_path

EVAL_SPLITS = ("val", "test", "backtest")
# the params keys that bound each split, for error messages
SPLIT_KEYS = {
    "train": ("split.train_start", "split.val_start"),
    "val": ("split.val_start", "split.test_start"),
    "test": ("split.test_start", "split.backtest_start"),
    "backtest": ("split.backtest_start", "split.backtest_end"),
}


class _NpzRecord:
    """Save/load a dataclass of arrays as one .npz; scalars and name lists round-trip to int and list[str]."""

    def _check(self) -> None:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        arrays = {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # a file handle: np.savez would append .npz to the temp name

    @classmethod
    def load(cls, path: str | Path) -> Self:
        names = [f.name for f in dataclasses.fields(cls)]
        try:
            with np.load(path, allow_pickle=False) as npz:
                missing = [n for n in names if n not in npz.files]
                if missing:
                    raise DataError(
                        f"{path}: missing array(s) {missing} for {cls.__name__} (has {sorted(npz.files)}); "
                        "re-run the split stage (dvc repro split)"
                    )
                values = {n: npz[n] for n in names}
        except (OSError, ValueError) as exc:
            raise DataError(
                f"{path}: cannot read it as a {cls.__name__} .npz ({exc}); re-run the split stage"
            ) from None
        for name, value in values.items():
            if name == "feature_names":
                values[name] = [str(v) for v in value.tolist()]
            elif value.ndim == 0:
                values[name] = value.item()
        record = cls(**values)
        try:
            record._check()
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
        return record


@dataclass(frozen=True, eq=False)
class Samples(_NpzRecord):
    """Training episodes, ``L = context + horizon`` bars each, no gap inside, entirely inside the train range."""

    features: np.ndarray  # (S, L, F) float32
    close: np.ndarray  # (S, L) float64 price
    funding: np.ndarray  # (S, L) float64, f_j per bar
    open_time: np.ndarray  # (S,) int64 Unix ms of the first bar
    feature_names: list[str]

    def __len__(self) -> int:
        return self.features.shape[0]

    def _check(self) -> None:
        if self.features.ndim != 3:
            raise DataError(f"Samples.features must be (samples, bars, features), got shape {self.features.shape}")
        s, length, f = self.features.shape
        if self.close.shape != (s, length) or self.funding.shape != (s, length) or self.open_time.shape != (s,):
            raise DataError(
                f"Samples arrays disagree in shape: features {self.features.shape}, close "
                f"{self.close.shape}, funding {self.funding.shape}, open_time {self.open_time.shape}"
            )
        if len(self.feature_names) != f:
            raise DataError(f"Samples have {f} feature channels but {len(self.feature_names)} feature_names")


@dataclass(frozen=True, eq=False)
class Series(_NpzRecord):
    """A continuous evaluation quarter; rows ``[0, start)`` are its warm-up, taken from just before the quarter."""

    features: np.ndarray  # (N, F) float32
    close: np.ndarray  # (N,) float64 price
    funding: np.ndarray  # (N,) float64, f_j per bar
    open_time: np.ndarray  # (N,) int64 Unix ms
    start: int  # index of the quarter's first bar = context + execution_lag_bars
    timeframe_ms: int
    feature_names: list[str]

    @property
    def gap_before(self) -> np.ndarray:
        """(N,) bool: bar ``j`` does not follow bar ``j-1`` directly (walk-forward earns no return across it)."""
        return np.r_[False, np.diff(self.open_time) != self.timeframe_ms]

    def _check(self) -> None:
        if self.features.ndim != 2:
            raise DataError(f"Series.features must be (bars, features), got shape {self.features.shape}")
        n, f = self.features.shape
        if any(a.shape != (n,) for a in (self.close, self.funding, self.open_time)):
            raise DataError(
                f"Series arrays disagree in shape: features {self.features.shape}, close "
                f"{self.close.shape}, funding {self.funding.shape}, open_time {self.open_time.shape}"
            )
        if len(self.feature_names) != f:
            raise DataError(f"Series has {f} feature channels but {len(self.feature_names)} feature_names")
        if not 0 <= self.start < n:
            raise DataError(f"Series start {self.start} is outside its {n} rows")


def _unix_ms(stamp: dt.datetime) -> int:
    return int(stamp.timestamp()) * 1000


def _iso(ms: int) -> str:
    return from_ms(np.array([ms]))[0].isoformat()


def _data_span(ms: np.ndarray) -> str:
    return f"the data's first bar opens {_iso(ms[0])}, its last bar opens {_iso(ms[-1])}"


def _train_samples(gap_count: np.ndarray, begin: int, end: int, length: int, stride: int) -> np.ndarray:
    """First rows of the gap-free windows ``[i, i + length)`` with ``begin <= i`` and ``i + length <= end``."""
    starts = np.arange(begin, end - length + 1, stride)
    return starts[gap_count[starts + length - 1] == gap_count[starts]]


def make_splits(
    features_df: pd.DataFrame,
    split_cfg: SplitConfig,
    window_cfg: WindowConfig,
    execution_lag_bars: int,
    timeframe_minutes: int,
) -> tuple[Samples, dict[str, Series], dict[str, Any]]:
    """Cut the feature table into train :class:`Samples`, the train series and val/test/backtest :class:`Series`.

    Raises ``ConfigError`` naming the ``split.*`` key when a split has no bars or no sample, when a quarter's
    warm-up lies before the data, or when a quarter ends after the data.
    """
    ranges = {k: (_unix_ms(a), _unix_ms(b)) for k, (a, b) in split_cfg.boundaries().items()}
    return cut_windows(features_df, ranges, SPLIT_KEYS, window_cfg, execution_lag_bars, timeframe_minutes)


def cut_windows(
    features_df: pd.DataFrame,
    ranges: dict[str, tuple[int, int]],
    keys: dict[str, tuple[str, str]],
    window_cfg: WindowConfig,
    execution_lag_bars: int,
    timeframe_minutes: int,
) -> tuple[Samples, dict[str, Series], dict[str, Any]]:
    """The cut behind :func:`make_splits` and every walk-forward fold: ``ranges`` are half-open Unix-ms windows,
    ``"train"`` and then the evaluation windows in order; ``keys`` name the params that bound each, for errors."""
    names = feature_columns(features_df)
    missing_cols = [c for c in ("open_time", "close", "funding_rate") if c not in features_df.columns]
    if missing_cols or not names or features_df.empty:
        raise DataError(
            f"features: missing column(s) {missing_cols}, {len(names)} feature column(s) ({FEATURE_PREFIX}*), "
            f"{len(features_df)} row(s); the table must come from the features stage: re-run it"
        )
    tf_ms = timeframe_minutes * MINUTE_MS
    ms = to_ms(features_df["open_time"])
    check_grid(
        ms,
        timeframe_minutes,
        "features",
        "data.timeframe_minutes must be the timeframe of the features: re-run the aggregate and features stages",
    )
    x = features_df[[FEATURE_PREFIX + n for n in names]].to_numpy(dtype=np.float32)
    close = features_df["close"].to_numpy(dtype=np.float64, copy=True)  # writable: torch reads these in place
    funding = features_df["funding_rate"].to_numpy(dtype=np.float64, copy=True)
    gap_before = np.r_[False, np.diff(ms) != tf_ms]
    gap_count = np.cumsum(gap_before)
    missing = np.r_[0, np.diff(ms) // tf_ms - 1]  # bars missing before each row
    bounds = {k: np.searchsorted(ms, [a, b]) for k, (a, b) in ranges.items()}

    def range_stats(lo: int, hi: int) -> dict[str, Any]:
        return {
            "bars": int(hi - lo),
            "gaps": int(gap_before[lo + 1 : hi].sum()),
            "missing_bars": int(missing[lo + 1 : hi].sum()),
            "first_bar": _iso(ms[lo]) if hi > lo else None,
            "last_bar": _iso(ms[hi - 1]) if hi > lo else None,
        }

    length = window_cfg.context + window_cfg.horizon
    lo, hi = bounds["train"]
    starts = _train_samples(gap_count, lo, hi, length, window_cfg.stride)
    if len(starts) == 0:
        raise ConfigError(
            f"no training sample: [{keys['train'][0]}, {keys['train'][1]}) holds {hi - lo} bars but a "
            f"sample needs window.context + window.horizon = {length} consecutive bars without a gap; "
            f"{_data_span(ms)}. Move the split dates or shorten the window"
        )
    rows = starts[:, None] + np.arange(length)  # (S, L)
    samples = Samples(x[rows], close[rows], funding[rows], ms[starts], names)
    stats: dict[str, Any] = {"train": {**range_stats(lo, hi), "samples": len(starts)}}

    warmup = window_cfg.context + execution_lag_bars
    # The train range as one continuous series as well (its warm-up is its own first bars): the MSE proxy fits
    # next-horizon returns at every bar, which the episodes of ``samples`` can not give near their ends.
    series = {"train_series": Series(x[lo:hi], close[lo:hi], funding[lo:hi], ms[lo:hi], warmup, tf_ms, names)}
    for name in [k for k in ranges if k != "train"]:
        lo, hi = bounds[name]
        _check_quarter(name, *ranges[name], keys[name], ms, tf_ms, lo, hi, warmup)
        part = slice(lo - warmup, hi)
        series[name] = Series(x[part], close[part], funding[part], ms[part], warmup, tf_ms, names)
        stats[name] = {
            **range_stats(lo, hi),
            "warmup_bars": warmup,
            "warmup_gaps": int(gap_before[lo - warmup + 1 : lo + 1].sum()),
        }
    return samples, series, stats


def _check_quarter(
    name: str,
    start_ms: int,
    end_ms: int,
    keys: tuple[str, str],
    ms: np.ndarray,
    tf_ms: int,
    lo: int,
    hi: int,
    warmup: int,
) -> None:
    """Refuse a quarter without bars, one the data ends inside, and one without its warm-up."""
    start_key, end_key = keys
    start, end = (dt.datetime.fromtimestamp(v / 1000, dt.UTC) for v in (start_ms, end_ms))
    if hi == lo:
        raise ConfigError(
            f"{start_key} .. {end_key} ({start:%Y-%m-%d} .. {end:%Y-%m-%d}) holds no bar: {_data_span(ms)}. "
            "Set the split dates inside the data"
        )
    if end_ms > ms[-1] + tf_ms:
        raise ConfigError(
            f"{end_key} ({end:%Y-%m-%d}) is after the end of the data ({_data_span(ms)}): the {name} quarter would "
            f"be cut short. Set {end_key} no later than the last bar's close, or provide more data"
        )
    if lo < warmup:
        raise ConfigError(
            f"{start_key} ({start:%Y-%m-%d}): the {name} quarter needs {warmup} warm-up bars before it "
            f"(window.context + sim.execution_lag_bars) but the data has {lo}; {_data_span(ms)}. "
            f"Move {start_key} later or provide earlier data"
        )
