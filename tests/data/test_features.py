"""Features: a per-bar reference, causality, funding per bar, presets, mirror_spec."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from diffquant.config import FeatureConfig
from diffquant.data.contracts import from_ms, to_ms
from diffquant.data.features import (
    TIME_CHANNELS,
    VOL_FLOOR,
    build_features,
    feature_columns,
    feature_names,
    funding_per_bar,
    mirror_spec,
    warmup_bars,
)
from diffquant.errors import ConfigError, DataError
from tests.data.real_data import fixture_bars_30m, fixture_funding  # noqa: F401  (registers the fixtures)

ALL_ON = FeatureConfig(typical_price=True, rolling_vol=True, time_features=True)
TF_MS = 30 * 60_000


def reference_features(bars: pd.DataFrame, cfg: FeatureConfig, tf_minutes: int) -> dict[str, np.ndarray]:
    """The formulas of docs/upstream.md, "Feature formulas" (no epsilons), bar by bar in float64; first bar dropped."""
    o, h, low, c = (bars[k].to_numpy() for k in ("open", "high", "low", "close"))
    closes_at = [ts.to_pydatetime() for ts in bars["open_time"] + pd.Timedelta(minutes=tf_minutes)]
    r = [0.0] + [math.log(c[t] / c[t - 1]) for t in range(1, len(c))]
    names = feature_names(cfg, "num_trades" in bars.columns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for t in range(1, len(bars)):
        for name, price in (("open", o), ("high", h), ("low", low), ("close", c)):
            if name in out:
                out[name].append(math.log(price[t] / c[t - 1]))
        if "typical_price" in out:
            out["typical_price"].append(math.log((h[t] + low[t] + c[t]) / 3 / c[t - 1]))
        for name in ("volume", "num_trades"):
            if name in out:
                v = bars[name].to_numpy()
                mean = float(np.mean(v[max(0, t - cfg.vol_window + 1) : t + 1]))
                out[name].append(math.log(v[t] / mean + 1) if mean > 0 else 0.0)
        if "rolling_vol" in out:
            std = float(np.std(r[max(0, t - cfg.vol_window_vol + 1) : t + 1]))
            out["rolling_vol"].append(math.log(max(std, VOL_FLOOR)))
        if cfg.time_features:
            hour = closes_at[t].hour + closes_at[t].minute / 60
            day = closes_at[t].weekday()
            out["hour_sin"].append(math.sin(2 * math.pi * hour / 24))
            out["hour_cos"].append(math.cos(2 * math.pi * hour / 24))
            out["dow_sin"].append(math.sin(2 * math.pi * day / 7))
            out["dow_cos"].append(math.cos(2 * math.pi * day / 7))
    return {k: np.asarray(v) for k, v in out.items()}


def bars_with_flat_zero_volume(n: int = 400, seed: int = 1) -> pd.DataFrame:
    """Synthetic 30-minute bars with a flat, zero-volume stretch longer than every window (maintenance)."""
    rng = np.random.default_rng(seed)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0, 2e-3, n)))
    close[100:140] = close[99]
    volume = rng.exponential(3.0, n)
    volume[100:140] = 0.0
    open_ = np.r_[close[0], close[:-1]]
    wick = np.abs(rng.normal(0, 1e-3, n)) * close
    wick[100:140] = 0.0
    ms = pd.Timestamp("2024-06-01", tz="UTC").value // 10**9 * 1000 + TF_MS * np.arange(n)
    return pd.DataFrame(
        {
            "open_time": from_ms(ms),
            "open": open_,
            "high": np.maximum(open_, close) + wick,
            "low": np.minimum(open_, close) - wick,
            "close": close,
            "volume": volume,
            "num_trades": np.where(volume > 0, rng.integers(1, 100, n), 0).astype(float),
        }
    )


def no_funding() -> pd.DataFrame:
    return pd.DataFrame({"funding_time": from_ms(np.array([], dtype=np.int64)), "funding_rate": np.array([])})


def test_layout_dtypes_and_first_bar_dropped(bars_30m, funding):
    feats = build_features(bars_30m, funding, ALL_ON, 30)
    names = ["open", "high", "low", "close", "volume", "typical_price", "rolling_vol", *TIME_CHANNELS]
    assert list(feats.columns) == ["open_time", "close", "funding_rate", *("x_" + n for n in names)]
    assert feature_columns(feats) == names
    assert len(feats) == len(bars_30m) - 1 == 35_087
    assert feats["open_time"].dtype == "datetime64[ms, UTC]"
    assert feats["open_time"].iloc[0] == bars_30m["open_time"].iloc[1]
    assert feats["close"].dtype == np.float64 and feats["funding_rate"].dtype == np.float64
    np.testing.assert_array_equal(feats["close"].to_numpy(), bars_30m["close"].to_numpy()[1:])
    assert all(feats["x_" + n].dtype == np.float32 for n in names)
    assert np.isfinite(feats.drop(columns="open_time").to_numpy()).all()


@pytest.mark.slow  # a per-bar Python reference over the whole shipped series
def test_real_data_matches_the_per_bar_reference(bars_30m, funding):
    """Whole shipped series: the rolling means/stds keep float32 accuracy over 35k bars."""
    cfg = FeatureConfig(typical_price=True, rolling_vol=True, time_features=True, vol_window=12, vol_window_vol=48)
    feats = build_features(bars_30m, funding, cfg, 30)
    want = reference_features(bars_30m, cfg, 30)
    for name, values in want.items():
        np.testing.assert_allclose(feats["x_" + name], values.astype(np.float32), rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("vol_window", [1, 12, 50])
def test_zero_volume_and_flat_stretches_stay_finite(vol_window):
    bars = bars_with_flat_zero_volume()
    cfg = FeatureConfig(preset="full", rolling_vol=True, vol_window=vol_window, vol_window_vol=12)
    feats = build_features(bars, no_funding(), cfg, 30)
    assert np.isfinite(feats.filter(like="x_").to_numpy()).all()
    want = reference_features(bars, cfg, 30)
    for name, values in want.items():
        np.testing.assert_allclose(feats["x_" + name], values.astype(np.float32), rtol=1e-6, atol=1e-7, err_msg=name)
    # inside the stretch (after the window has filled with zeros): volume 0, volatility at the floor
    inside = slice(100 + 50, 139)
    assert (feats["x_volume"].to_numpy()[inside] == 0).all()
    assert (feats["x_rolling_vol"].to_numpy()[inside] == np.float32(math.log(VOL_FLOOR))).all()


def test_funding_goes_to_the_bar_that_ends_at_or_after_it():
    open_ms = np.array([0, 1, 2, 4, 5]) * TF_MS  # bar 3 (3*TF) is missing
    events = np.array([0, TF_MS // 2, TF_MS, 2 * TF_MS + 1, 3 * TF_MS + 7, 5 * TF_MS + 1, 6 * TF_MS + 1])
    rates = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
    table = pd.DataFrame({"funding_time": from_ms(events), "funding_rate": rates})
    # 0: at bar 0's open -> the bar before the data; TF/2 and TF -> bar 0 (summed); 2TF+1 -> bar 2;
    # 3TF+7 -> the missing bar: nobody; 5TF+1 -> bar 4 (open 5TF); 6TF+1 -> after the last bar's close
    np.testing.assert_array_equal(funding_per_bar(open_ms, table, TF_MS), [6.0, 0.0, 8.0, 0.0, 32.0])


def test_real_funding_is_summed_per_bar(bars_30m, funding):
    feats = build_features(bars_30m, funding, FeatureConfig(), 30)
    paid = feats["funding_rate"].to_numpy()
    # every 8-hour event lands in the 30-minute bar that closes on it, except 2024-01-01 00:00 (before the data)
    assert (paid != 0).sum() == len(funding) - 1 == 2192
    np.testing.assert_allclose(paid.sum(), funding["funding_rate"].iloc[1:].sum(), rtol=1e-12)
    closes_at = to_ms(feats["open_time"])[paid != 0] + TF_MS
    np.testing.assert_array_equal(closes_at, to_ms(funding["funding_time"])[1:])


def test_time_features_use_the_close_time():
    bars = bars_with_flat_zero_volume()
    start = pd.Timestamp("2024-06-09 23:00", tz="UTC").value // 10**9 * 1000  # a Sunday
    bars["open_time"] = from_ms(start + TF_MS * np.arange(len(bars)))
    feats = build_features(bars, no_funding(), FeatureConfig(time_features=True), 30)
    first = feats.iloc[0]  # opens Sunday 23:30, closes Monday 00:00
    assert (first["x_hour_sin"], first["x_hour_cos"]) == pytest.approx((0.0, 1.0), abs=1e-7)
    assert (first["x_dow_sin"], first["x_dow_cos"]) == pytest.approx((0.0, 1.0), abs=1e-7)  # Monday = 0
    second = feats.iloc[1]  # closes Monday 00:30
    assert second["x_hour_sin"] == pytest.approx(math.sin(2 * math.pi * 0.5 / 24), abs=1e-7)


@pytest.mark.parametrize(
    ("cfg", "has_trades", "names"),
    [
        (FeatureConfig(preset="ohlc", rolling_vol=False), False, ["open", "high", "low", "close"]),
        (FeatureConfig(), False, ["open", "high", "low", "close", "volume", "rolling_vol"]),
        (
            FeatureConfig(preset="full", rolling_vol=False),
            True,
            ["open", "high", "low", "close", "volume", "num_trades"],
        ),
        (
            FeatureConfig(preset="custom", custom_columns=["close", "num_trades"], time_features=True),
            True,
            ["close", "num_trades", "rolling_vol", *TIME_CHANNELS],
        ),
    ],
)
def test_preset_channels(cfg, has_trades, names):
    assert feature_names(cfg, has_trades) == names


def test_full_preset_without_num_trades_is_refused(bars_30m, funding):
    with pytest.raises(ConfigError) as err:
        build_features(bars_30m.iloc[:50], funding, FeatureConfig(preset="full"), 30)
    assert "features.preset" in str(err.value) and "num_trades" in str(err.value)


@pytest.mark.parametrize("columns", [["close", "vwap"], ["close", "close"]])
def test_bad_custom_columns_are_refused(columns):
    with pytest.raises(ConfigError) as err:
        feature_names(FeatureConfig(preset="custom", custom_columns=columns), True)
    message = str(err.value)
    assert "features.custom_columns" in message and "open, high, low, close, volume, num_trades" in message


def test_bars_of_another_timeframe_are_refused(bars_30m, funding):
    with pytest.raises(DataError, match=r"not on the 60-minute grid.*data\.timeframe_minutes"):
        build_features(bars_30m.iloc[:50], funding, FeatureConfig(), 60)


def test_custom_num_trades_without_the_column_is_refused():
    with pytest.raises(ConfigError, match=r"features\.custom_columns.*num_trades"):
        feature_names(FeatureConfig(preset="custom", custom_columns=["close", "num_trades"]), False)


@pytest.mark.parametrize("change", ["garbage", "removed"])
def test_features_are_causal(bars_30m, funding, change):
    """Rows up to bar t are bit-identical whatever happens after bar t closes (bars and funding)."""
    bars = bars_30m.iloc[:3000].reset_index(drop=True)
    t = 2000
    cfg = FeatureConfig(preset="ohlcv", typical_price=True, rolling_vol=True, time_features=True)
    base = build_features(bars, funding, cfg, 30)
    close_t_ms = to_ms(bars["open_time"])[t] + TF_MS
    if change == "removed":
        other_bars = bars.iloc[: t + 1]
        other_funding = funding[to_ms(funding["funding_time"]) <= close_t_ms]
    else:
        rng = np.random.default_rng(7)
        other_bars = bars.copy()
        later = np.arange(len(bars)) > t
        noise = rng.uniform(1.0, 1e6, (later.sum(), 5))
        other_bars.loc[later, ["open", "high", "low", "close", "volume"]] = noise
        other_funding = funding.copy()
        after = to_ms(funding["funding_time"]) > close_t_ms
        other_funding.loc[after, "funding_rate"] = rng.normal(0, 1, after.sum())
    other = build_features(other_bars, other_funding, cfg, 30)
    pd.testing.assert_frame_equal(other.iloc[:t], base.iloc[:t], check_exact=True)  # feature row t-1 is bar t
    if change == "garbage":
        assert not other.iloc[t:].equals(base.iloc[t:])  # the change did reach the later rows


def reflect(bars: pd.DataFrame, c_ref: float) -> pd.DataFrame:
    """P -> c_ref²/P: the reflected high is the reflected low."""
    out = bars.copy()
    for col in ("open", "close"):
        out[col] = c_ref**2 / bars[col]
    out["high"], out["low"] = c_ref**2 / bars["low"], c_ref**2 / bars["high"]
    return out


def test_mirror_spec_maps_features_of_reflected_prices(bars_30m, funding):
    bars = bars_30m.iloc[:5000]
    cfg = FeatureConfig(preset="ohlcv", typical_price=True, rolling_vol=True, time_features=True)
    names = feature_names(cfg, False)
    x = build_features(bars, funding, cfg, 30).filter(like="x_").to_numpy()
    x_reflected = build_features(reflect(bars, float(bars["close"].median())), funding, cfg, 30)
    x_reflected = x_reflected.filter(like="x_").to_numpy()
    perm, sign = mirror_spec(names)
    mirrored = sign * x[:, perm]
    exact = [i for i, n in enumerate(names) if n != "typical_price"]
    np.testing.assert_allclose(mirrored[:, exact], x_reflected[:, exact], rtol=1e-5, atol=1e-6)
    # typical_price negates only approximately: the error is log(mean(p) * mean(1/p)) over the bar's three prices,
    # between 0 and the Kantorovich bound log((h + l)² / 4hl) (about a quarter of the squared log range)
    tp = names.index("typical_price")
    error = (x_reflected[:, tp] - mirrored[:, tp]).astype(np.float64)
    h, low = bars["high"].to_numpy()[1:], bars["low"].to_numpy()[1:]
    assert (error > -1e-6).all() and (error < np.log((h + low) ** 2 / (4 * h * low)) + 1e-6).all()
    # mirroring twice is the identity
    np.testing.assert_array_equal(sign * mirrored[:, perm], x)


def test_mirror_spec_layout_and_unpaired_high():
    perm, sign = mirror_spec(["close", "low", "volume", "high", "rolling_vol"])
    np.testing.assert_array_equal(perm, [0, 3, 2, 1, 4])
    np.testing.assert_array_equal(sign, [-1, -1, 1, -1, 1])
    with pytest.raises(ConfigError, match=r"train\.mirror"):
        mirror_spec(["close", "high"])


@pytest.mark.parametrize("cfg", [FeatureConfig(), FeatureConfig(vol_window=30, vol_window_vol=5)])
def test_a_tail_has_the_full_historys_features_past_its_warmup(bars_30m, funding, cfg) -> None:
    """What the served model and the paper trader rely on: features computed from a table that starts later equal
    those of the whole history, bit for bit, from its row ``warmup_bars``; one bar earlier they do not."""
    bars = bars_30m.iloc[:2000]
    full = build_features(bars, funding, cfg, 30)  # row i is bars row i + 1
    w = warmup_bars(cfg, 30)
    for start in (1, 333, 1500):
        tail = build_features(bars.iloc[start:], funding, cfg, 30)
        got, want = tail.iloc[w - 1 :].reset_index(drop=True), full.iloc[start + w - 1 :].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_exact=True)
        assert not tail.iloc[w - 2].equals(full.iloc[start + w - 2])
