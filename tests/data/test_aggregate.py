"""Aggregation: the shipped data's bar count, agreement with pandas resample, holes, bad timeframes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diffquant.data.aggregate import aggregate
from diffquant.data.contracts import from_ms, to_ms
from diffquant.errors import ConfigError, DataError
from tests.data.real_data import fixture_bars_5m  # noqa: F401  (registers the bars_5m fixture)


def resample_reference(bars: pd.DataFrame, source_minutes: int, target_minutes: int) -> pd.DataFrame:
    """Independent reference: pandas resample on epoch-aligned, left-closed, left-labelled buckets."""
    sums = [c for c in ("volume", "num_trades") if c in bars.columns]
    grouped = bars.set_index("open_time").resample(f"{target_minutes}min", origin="epoch", closed="left", label="left")
    out = grouped.agg({"open": "first", "high": "max", "low": "min", "close": "last", **dict.fromkeys(sums, "sum")})
    out = out[grouped["close"].count() == target_minutes // source_minutes]
    return out.reset_index()


def assert_same_bars(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    np.testing.assert_array_equal(to_ms(got["open_time"]), to_ms(want["open_time"]))
    for col in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(got[col].to_numpy(), want[col].to_numpy(), err_msg=col)
    for col in got.columns.drop(["open_time", "open", "high", "low", "close"]):
        np.testing.assert_allclose(got[col].to_numpy(), want[col].to_numpy(), rtol=1e-12, err_msg=col)


def synthetic_1m(n: int, holes: int, seed: int = 0) -> pd.DataFrame:
    """1-minute bars starting mid-bucket (07:13), with ``holes`` missing minutes and a num_trades column."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-03-05 07:13", tz="UTC").value // 10**9 * 1000
    ms = start + 60_000 * np.arange(n)
    ms = np.delete(ms, rng.choice(n, holes, replace=False))
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, len(ms))))
    open_ = np.r_[100.0, close[:-1]]
    spread = np.abs(rng.normal(0, 1e-3, len(ms))) * close
    return pd.DataFrame(
        {
            "open_time": from_ms(ms),
            "open": open_,
            "high": np.maximum(open_, close) + spread,
            "low": np.minimum(open_, close) - spread,
            "close": close,
            "volume": rng.exponential(5.0, len(ms)),
            "num_trades": rng.integers(0, 50, len(ms)).astype(float),
        }
    )


def test_shipped_5m_to_30m_gives_35088_bars(bars_5m):
    bars, stats = aggregate(bars_5m, 5, 30)
    assert len(bars) == 35_088 == stats.buckets_complete
    assert stats.source_bars == 210_528
    assert stats.buckets_dropped == 0 and stats.first_dropped == []
    assert bars["open_time"].dtype == "datetime64[ms, UTC]"
    assert bars["open_time"].iloc[0] == pd.Timestamp("2024-01-01 00:00", tz="UTC")  # stamped with the bucket's open
    assert bars["open_time"].iloc[-1] == pd.Timestamp("2025-12-31 23:30", tz="UTC")


@pytest.mark.parametrize("target", [15, 30, 60, 240])
def test_shipped_data_equals_pandas_resample(bars_5m, target):
    bars, _ = aggregate(bars_5m, 5, target)
    assert_same_bars(bars, resample_reference(bars_5m, 5, target))


@pytest.mark.parametrize("target", [5, 30, 60, 90])
def test_synthetic_1m_with_holes_equals_pandas_resample(target):
    source = synthetic_1m(20_000, holes=40)
    bars, stats = aggregate(source, 1, target)
    want = resample_reference(source, 1, target)
    assert_same_bars(bars, want)
    n_buckets = len(np.unique(to_ms(source["open_time"]) // (target * 60_000)))
    assert stats.buckets_complete == len(want)
    assert stats.buckets_dropped == n_buckets - len(want) > 0  # holes and the cut first/last buckets
    assert stats.source_bars == len(source)


def test_dropped_buckets_are_listed_by_open_time():
    source = synthetic_1m(600, holes=0)
    hole = pd.Timestamp("2024-03-05 09:41", tz="UTC")
    source = source[source["open_time"] != hole].reset_index(drop=True)
    bars, stats = aggregate(source, 1, 30)
    # 07:00 is cut by the 07:13 start, 09:30 has the hole, 17:00 is cut by the end (07:13 + 600 min = 17:13)
    assert stats.first_dropped == [
        "2024-03-05T07:00:00+00:00",
        "2024-03-05T09:30:00+00:00",
        "2024-03-05T17:00:00+00:00",
    ]
    assert pd.Timestamp("2024-03-05 09:30", tz="UTC") not in set(bars["open_time"])


def test_microsecond_stamps_give_the_same_bars(bars_5m):
    """pandas 3 may hold stamps in µs; the ms conversion must not depend on the unit."""
    subset = bars_5m.iloc[:5000]
    as_us = subset.assign(open_time=subset["open_time"].astype("datetime64[us, UTC]"))
    assert_same_bars(aggregate(as_us, 5, 30)[0], aggregate(subset, 5, 30)[0])


def test_same_timeframe_is_identity(bars_5m):
    bars, stats = aggregate(bars_5m, 5, 5)
    pd.testing.assert_frame_equal(bars, bars_5m)
    assert stats.buckets_dropped == 0 and stats.buckets_complete == len(bars_5m)


@pytest.mark.parametrize("target", [7, 3, 32])
def test_timeframe_not_a_multiple_is_refused(bars_5m, target):
    with pytest.raises(ConfigError) as err:
        aggregate(bars_5m.iloc[:100], 5, target)
    message = str(err.value)
    assert "data.timeframe_minutes" in message and f"({target})" in message
    assert "5 min" in message and "5, 10, 15" in message


def test_stamps_off_the_source_grid_are_refused():
    source = synthetic_1m(100, holes=0)
    source["open_time"] = from_ms(to_ms(source["open_time"]) + 1_000)
    with pytest.raises(DataError, match="not on the 1-minute grid"):
        aggregate(source, 1, 30)
