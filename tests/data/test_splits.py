"""Splits: the shipped data's counts, no sample across a gap or into val, warm-up, errors, save/load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diffquant.config import SplitConfig, WindowConfig
from diffquant.data.contracts import from_ms, to_ms
from diffquant.data.splits import Samples, Series, make_splits
from diffquant.errors import ConfigError, DataError
from tests.data.real_data import fixture_features_30m  # noqa: F401  (registers the features_30m fixture)

TF_MS = 30 * 60_000
WINDOW = WindowConfig(context=96, horizon=24, stride=24)
DAY_MS = 86_400_000


def day_ms(date: str) -> int:
    return pd.Timestamp(date, tz="UTC").value // 10**9 * 1000


def synthetic_features(first: str, days: int, holes: list[str] = ()) -> pd.DataFrame:
    """A feature table of 30-minute bars from ``first`` for ``days`` days, without the bars opening at ``holes``."""
    ms = day_ms(first) + TF_MS * np.arange(days * 48)
    ms = ms[~np.isin(ms, [day_ms(h) for h in holes])]
    n = len(ms)
    return pd.DataFrame(
        {
            "open_time": from_ms(ms),
            "close": 100.0 + np.arange(n),
            "funding_rate": np.where(ms % (8 * 3_600_000) == 0, 1e-4, 0.0),
            "x_close": np.arange(n, dtype=np.float32),
            "x_volume": -np.arange(n, dtype=np.float32),
        }
    )


SMALL_SPLIT = SplitConfig(
    train_start="2024-01-01",
    val_start="2024-01-21",
    test_start="2024-01-24",
    backtest_start="2024-01-27",
    backtest_end="2024-01-30",
)


def test_shipped_data_counts(features_30m):
    samples, series, stats = make_splits(features_30m, SplitConfig(), WINDOW, 1, 30)
    # train = [2024-01-01, 2025-04-01): 456 days * 48 bars - the first bar (no previous close) = 21,887 bars;
    # whole windows of 120 bars every 24 rows: floor((21,887 - 120) / 24) + 1 = 907
    assert stats["train"]["bars"] == 21_887 and stats["train"]["samples"] == 907 == len(samples.open_time)
    assert samples.features.shape == (907, 120, 6)
    expected_days = {"val": 91, "test": 92, "backtest": 92}  # Apr-Jun, Jul-Sep, Oct-Dec 2025
    for name, days in expected_days.items():
        s = series[name]
        assert stats[name]["bars"] == days * 48 and stats[name]["gaps"] == 0
        assert s.start == 97 and len(s.open_time) == 97 + days * 48  # context 96 + execution lag 1
    assert stats["val"]["bars"] == 4_368
    assert series["backtest"].open_time[-1] == day_ms("2025-12-31") + 47 * TF_MS


def test_upstream_rule_gives_910_on_the_same_data(features_30m):
    """Upstream's 910 comes from its rule, not from different data (docs/upstream.md, "Sample count").

    It steps every 24 rows from the first feature row and keeps a sample when its first bar's CLOSE time lies in
    [2024-01-01, 2025-03-31): the boundary is a day early and the window may run 98 bars past it. Whole windows in
    our [2024-01-01, 2025-04-01) give 907; 912 would start there by upstream's first-bar rule. The overlap into val is
    docs/upstream.md, "Defects fixed" item 7.
    """
    close_ms = to_ms(features_30m["open_time"]) + TF_MS
    firsts = close_ms[np.arange(0, len(close_ms) - 120 + 1, 24)]
    assert ((firsts >= day_ms("2024-01-01")) & (firsts < day_ms("2025-03-31"))).sum() == 910
    last_sample = close_ms[np.flatnonzero(close_ms == firsts[909])[0] + np.arange(120)]
    assert (last_sample >= day_ms("2025-03-31")).sum() == 98  # bars of upstream's own val
    open_ms = close_ms - TF_MS
    first_bar_rule = open_ms[np.arange(0, len(open_ms) - 120 + 1, 24)] < day_ms("2025-04-01")
    assert first_bar_rule.sum() == 912


def test_samples_are_whole_windows_inside_train(features_30m):
    samples, _, _ = make_splits(features_30m, SplitConfig(), WINDOW, 1, 30)
    ms = to_ms(features_30m["open_time"])
    first_rows = np.searchsorted(ms, samples.open_time)
    assert (np.diff(first_rows) == 24).all() and first_rows[0] == 0
    assert ms[first_rows[-1] + 119] < day_ms("2025-04-01")
    rows = first_rows[-1] + np.arange(120)
    np.testing.assert_array_equal(
        samples.features[-1],
        features_30m[["x_open", "x_high", "x_low", "x_close", "x_volume", "x_rolling_vol"]].to_numpy()[rows],
    )
    np.testing.assert_array_equal(samples.close[-1], features_30m["close"].to_numpy()[rows])
    np.testing.assert_array_equal(samples.funding[-1], features_30m["funding_rate"].to_numpy()[rows])
    assert samples.feature_names == ["open", "high", "low", "close", "volume", "rolling_vol"]
    assert samples.features.dtype == np.float32 and samples.close.dtype == np.float64


def test_no_sample_crosses_a_gap():
    holes = ["2024-01-05 10:00", "2024-01-09 00:00", "2024-01-09 00:30", "2024-01-14 23:30"]
    feats = synthetic_features("2024-01-01", 30, holes)
    window = WindowConfig(context=20, horizon=6, stride=5)
    samples, _, stats = make_splits(feats, SMALL_SPLIT, window, 1, 30)
    # plain reference: every 5th row from the first train row, kept when its 26 bars are consecutive and in train
    ms = to_ms(feats["open_time"])
    want = [
        ms[i]
        for i in range(0, len(ms) - 25, 5)
        if ms[i + 25] < day_ms("2024-01-21") and ms[i + 25] - ms[i] == 25 * TF_MS
    ]
    np.testing.assert_array_equal(samples.open_time, want)
    spans = samples.open_time[:, None] + TF_MS * np.arange(26)
    assert not np.isin(spans, [day_ms(h) for h in holes]).any()
    assert stats["train"]["gaps"] == 3 and stats["train"]["missing_bars"] == 4


def test_warmup_comes_from_just_before_the_quarter():
    feats = synthetic_features("2024-01-01", 30, holes=["2024-01-25 12:00"])
    window = WindowConfig(context=20, horizon=6, stride=5)
    _, series, stats = make_splits(feats, SMALL_SPLIT, window, 2, 30)
    for name, first_day in (("val", "2024-01-21"), ("test", "2024-01-24"), ("backtest", "2024-01-27")):
        s = series[name]
        assert s.start == 22 and s.timeframe_ms == TF_MS
        assert s.open_time[s.start] == day_ms(first_day)
        np.testing.assert_array_equal(s.open_time[: s.start], day_ms(first_day) - TF_MS * np.arange(22, 0, -1))
        row = np.searchsorted(to_ms(feats["open_time"]), s.open_time[0])
        np.testing.assert_array_equal(s.features, feats[["x_close", "x_volume"]].to_numpy()[row : row + len(s.close)])
    test = series["test"]
    assert test.gap_before.sum() == 1 and test.open_time[test.gap_before][0] == day_ms("2024-01-25 12:30")
    assert stats["test"]["gaps"] == 1 and stats["test"]["bars"] == 3 * 48 - 1
    assert not series["val"].gap_before.any()


def test_execution_lag_sets_the_warmup(features_30m):
    _, series, _ = make_splits(features_30m, SplitConfig(), WINDOW, 0, 30)
    assert all(s.start == 96 for s in series.values())


@pytest.mark.parametrize(
    ("split", "key"),
    [
        (dict(val_start="2024-01-02"), "split.val_start"),  # warm-up before the data
        (dict(backtest_end="2024-02-15"), "split.backtest_end"),  # the data ends inside the quarter
        (dict(test_start="2024-02-10", backtest_start="2024-02-11", backtest_end="2024-02-12"), "split.test_start"),
        (dict(val_start="2024-01-03"), "split.train_start"),  # train too short for one sample
    ],
)
def test_split_dates_outside_the_data_are_refused(split, key):
    feats = synthetic_features("2024-01-01", 30)
    cfg = SplitConfig(**{**vars(SMALL_SPLIT), **split})
    window = WindowConfig(context=96, horizon=24, stride=24)
    with pytest.raises(ConfigError) as err:
        make_splits(feats, cfg, window, 1, 30)
    message = str(err.value)
    assert key in message and "2024-01-01T00:00:00+00:00" in message and "2024-01-30T23:30:00+00:00" in message


def test_test_quarter_without_bars_is_refused():
    feats = synthetic_features(
        "2024-01-01", 30, holes=[f"2024-01-24 {h:02d}:{m:02d}" for h in range(24) for m in (0, 30)]
    )
    cfg = SplitConfig(**{**vars(SMALL_SPLIT), "backtest_start": "2024-01-25"})  # test = the missing day
    with pytest.raises(ConfigError, match=r"split\.test_start .. split\.backtest_start .* holds no bar"):
        make_splits(feats, cfg, WindowConfig(context=20, horizon=6, stride=5), 1, 30)


def test_timeframe_mismatch_is_refused():
    feats = synthetic_features("2024-01-01", 30)
    with pytest.raises(DataError, match=r"not on the 60-minute grid.*data\.timeframe_minutes"):
        make_splits(feats, SMALL_SPLIT, WindowConfig(context=20, horizon=6, stride=5), 1, 60)


def test_save_load_round_trip(tmp_path, features_30m):
    samples, series, _ = make_splits(features_30m, SplitConfig(), WINDOW, 1, 30)
    samples.save(tmp_path / "train.npz")
    series["val"].save(tmp_path / "val.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.npz", "val.npz"]  # no temp file left behind
    got = Samples.load(tmp_path / "train.npz")
    for field in ("features", "close", "funding", "open_time"):
        np.testing.assert_array_equal(getattr(got, field), getattr(samples, field))
        assert getattr(got, field).dtype == getattr(samples, field).dtype
    assert got.feature_names == samples.feature_names and isinstance(got.feature_names[0], str)
    val = Series.load(tmp_path / "val.npz")
    assert (val.start, val.timeframe_ms) == (97, TF_MS) and type(val.start) is int
    np.testing.assert_array_equal(val.features, series["val"].features)
    np.testing.assert_array_equal(val.gap_before, np.zeros(len(val.close), bool))


def test_load_names_the_file_when_something_is_missing(tmp_path):
    path = tmp_path / "val.npz"
    np.savez(path, features=np.zeros((3, 2), np.float32), close=np.ones(3))
    with pytest.raises(DataError, match=r"val\.npz: missing array\(s\) \['funding', 'open_time', 'start'"):
        Series.load(path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk\.npz: cannot read"):
        Samples.load(tmp_path / "junk.npz")
    with pytest.raises(DataError, match=r"absent\.npz"):
        Samples.load(tmp_path / "absent.npz")


def test_a_series_file_is_not_samples(tmp_path, features_30m):
    _, series, _ = make_splits(features_30m, SplitConfig(), WINDOW, 1, 30)
    series["test"].save(tmp_path / "test.npz")
    with pytest.raises(DataError, match=r"test\.npz: Samples\.features must be"):
        Samples.load(tmp_path / "test.npz")
