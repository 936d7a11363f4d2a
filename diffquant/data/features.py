"""Bars -> the causal feature table (``features.parquet``, layout in docs/design_notes.md).

Every channel at bar ``t`` uses bars ``<= t`` only (a bar's data is known at its close, where the policy decides):

| channel | value at bar t (c = close, v = volume or trade count) |
|---|---|
| open, high, low, close | log(price_t / c_{t-1}) |
| volume, num_trades | log(v_t / mean(v_{t-w+1..t}) + 1), w = ``vol_window`` (0 when the mean is 0) |
| typical_price | log(((h + l + c) / 3)_t / c_{t-1}) |
| rolling_vol | log(max(std_pop(r_{t-w+1..t}), 1e-6)), r = close log-return (r_0 = 0), w = ``vol_window_vol`` |
| hour_sin/cos, dow_sin/cos | sin/cos(2π·hour/24), sin/cos(2π·weekday/7) of the bar's CLOSE time (the decision) |

Rolling windows expand over the first bars (fewer than w rows exist). Each rolling statistic is computed from its own
window alone (no running sums), so a table that starts later gives bit for bit the same features on every row past
its first :func:`warmup_bars` bars: the paper trader computes features from a short tail of bars (diffquant.deploy).

Prices are validated > 0, so no epsilon is needed (upstream added 1e-10 everywhere). Rolling windows count rows, so
after a gap they reach across it (as in upstream): the first bar after a gap carries the log-return across the gap,
and the next rolling windows include bars from before it. That is causal, not leakage, and a sample may start right
after a gap; it never contains one. The first bar is dropped: it has no previous close.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from diffquant.config import FeatureConfig
from diffquant.data.aggregate import check_grid
from diffquant.data.contracts import MINUTE_MS, PRICE_COLUMNS, from_ms, to_ms
from diffquant.errors import ConfigError

SOURCE_CHANNELS = ("open", "high", "low", "close", "volume", "num_trades")
PRESETS = {
    "ohlc": ("open", "high", "low", "close"),
    "ohlcv": ("open", "high", "low", "close", "volume"),
    "full": SOURCE_CHANNELS,
}
TIME_CHANNELS = ("hour_sin", "hour_cos", "dow_sin", "dow_cos")
FEATURE_PREFIX = "x_"
VOL_FLOOR = 1e-6  # std floor before the log: flat stretches (exchange maintenance) would give -inf
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


def source_channels(cfg: FeatureConfig, has_num_trades: bool) -> tuple[str, ...]:
    """The preset's (or the custom list's) source channels; refuses what the bars cannot provide."""
    if cfg.preset == "custom":
        chosen = tuple(cfg.custom_columns)
        unknown = [c for c in chosen if c not in SOURCE_CHANNELS]
        if unknown or len(set(chosen)) != len(chosen):
            what = f"unknown name(s) {unknown}" if unknown else "duplicated names"
            raise ConfigError(
                f"features.custom_columns {list(chosen)}: {what}; allowed, each once: {', '.join(SOURCE_CHANNELS)}"
            )
        setting = f"features.custom_columns = {list(chosen)}"
    else:
        chosen = PRESETS[cfg.preset]
        setting = f"features.preset = {cfg.preset!r}"
    if "num_trades" in chosen and not has_num_trades:
        raise ConfigError(
            f"{setting} needs num_trades, but the source bars have no num_trades column "
            "(e.g. the bundled 5-minute data); choose preset 'ohlcv' or a source with trade counts"
        )
    return chosen


def feature_names(cfg: FeatureConfig, has_num_trades: bool) -> list[str]:
    """Channel order: source channels, then typical_price, rolling_vol, time features (as upstream)."""
    names = list(source_channels(cfg, has_num_trades))
    if cfg.typical_price:
        names.append("typical_price")
    if cfg.rolling_vol:
        names.append("rolling_vol")
    if cfg.time_features:
        names.extend(TIME_CHANNELS)
    return names


def funding_per_bar(open_ms: np.ndarray, funding: pd.DataFrame, timeframe_ms: int) -> np.ndarray:
    """``f_j`` = sum of the funding rates with funding_time in (open_j, open_j + tf]; 0 for a bar without events.

    An event is paid by whoever holds the position through its instant, i.e. during the bar that ends at or after
    it. Events that fall in no bar (before the data, in a gap) are paid by nobody.
    """
    if funding.empty:
        return np.zeros(len(open_ms))
    event_ms = to_ms(funding["funding_time"])
    bar = np.searchsorted(open_ms, event_ms, side="left") - 1  # last bar opening strictly before the event
    inside = bar >= 0
    inside[inside] = event_ms[inside] <= open_ms[bar[inside]] + timeframe_ms
    rates = funding["funding_rate"].to_numpy(dtype=np.float64)
    return np.bincount(bar[inside], weights=rates[inside], minlength=len(open_ms))


def _windows(values: np.ndarray, window: int) -> np.ndarray:
    """(N,) -> (N, window) view: the ``window`` values ending at (and including) each row, NaN before the first."""
    return sliding_window_view(np.concatenate([np.full(window - 1, np.nan), values]), window)


def _volume_channel(v: np.ndarray, window: int) -> np.ndarray:
    mean = np.nanmean(_windows(v, window), axis=1)
    # v >= 0 and v_t is in its own window, so mean == 0 only in an all-zero window (v_t == 0): ratio 0.
    ratio = np.divide(v, mean, out=np.zeros_like(v), where=mean > 0)
    return np.log1p(ratio)


def _rolling_vol(close: np.ndarray, window: int) -> np.ndarray:
    r = np.diff(np.log(close), prepend=np.log(close[:1]))  # r_0 = 0
    std = np.nanstd(_windows(r, window), axis=1)  # population std (ddof 0)
    return np.log(np.maximum(std, VOL_FLOOR))


def warmup_bars(cfg: FeatureConfig) -> int:
    """Bars a table needs before its first row whose features equal those of the full history.

    The first bar has no previous close; a volume channel's window of w bars needs the w - 1 before it; the rolling
    volatility's w returns need the w closes before it (a table's first return is set to 0, not the true one).
    """
    needs = [1]
    if {"volume", "num_trades"} & set(source_channels(cfg, has_num_trades=True)):
        needs.append(cfg.vol_window - 1)
    if cfg.rolling_vol:
        needs.append(cfg.vol_window_vol)
    return max(needs)


def _time_channels(open_ms: np.ndarray, timeframe_ms: int) -> dict[str, np.ndarray]:
    close_ms = open_ms + timeframe_ms
    hour = (close_ms % DAY_MS) / HOUR_MS
    weekday = (close_ms // DAY_MS + EPOCH_WEEKDAY) % 7
    return {
        "hour_sin": np.sin(2 * np.pi * hour / 24),
        "hour_cos": np.cos(2 * np.pi * hour / 24),
        "dow_sin": np.sin(2 * np.pi * weekday / 7),
        "dow_cos": np.cos(2 * np.pi * weekday / 7),
    }


def build_features(
    bars: pd.DataFrame, funding: pd.DataFrame, cfg: FeatureConfig, timeframe_minutes: int
) -> pd.DataFrame:
    """Canonical bars (+ funding events) -> ``open_time, close, funding_rate, x_<name>...`` without the first bar.

    ``close`` stays a float64 price (the simulator's returns), ``funding_rate`` is ``f_j`` of
    :func:`funding_per_bar`, features are float32. Raises ``ConfigError`` for a preset the bars cannot serve.
    """
    names = feature_names(cfg, "num_trades" in bars.columns)
    tf_ms = timeframe_minutes * MINUTE_MS
    open_ms = to_ms(bars["open_time"])
    check_grid(
        open_ms, timeframe_minutes, "bars", "data.timeframe_minutes must be the bars' timeframe: re-run aggregate"
    )
    close = bars["close"].to_numpy(dtype=np.float64)
    prev_close = np.r_[np.nan, close[:-1]]  # row 0 is dropped below

    channels: dict[str, np.ndarray] = {}
    for name in names:
        if name in PRICE_COLUMNS:
            channels[name] = np.log(bars[name].to_numpy(dtype=np.float64) / prev_close)
        elif name in ("volume", "num_trades"):
            channels[name] = _volume_channel(bars[name].to_numpy(dtype=np.float64), cfg.vol_window)
    if cfg.typical_price:
        typical = (bars["high"].to_numpy(np.float64) + bars["low"].to_numpy(np.float64) + close) / 3
        channels["typical_price"] = np.log(typical / prev_close)
    if cfg.rolling_vol:
        channels["rolling_vol"] = _rolling_vol(close, cfg.vol_window_vol)
    if cfg.time_features:
        channels.update(_time_channels(open_ms, tf_ms))

    out = pd.DataFrame(
        {
            "open_time": from_ms(open_ms[1:]),
            "close": close[1:],
            "funding_rate": funding_per_bar(open_ms, funding, tf_ms)[1:],
        }
    )
    for name in names:
        out[FEATURE_PREFIX + name] = channels[name][1:].astype(np.float32)
    return out


def feature_columns(features: pd.DataFrame) -> list[str]:
    """The feature names (without the ``x_`` prefix) of a feature table, in column order."""
    return [c[len(FEATURE_PREFIX) :] for c in features.columns if c.startswith(FEATURE_PREFIX)]


def mirror_spec(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """How each feature maps under the price reflection P -> c_ref²/P (log prices negate about log c_ref).

    ``mirrored[..., i] = sign[i] * x[..., perm[i]]``. Log-returns against the previous close negate; the mirrored
    high is the reflected low, so high and low swap and negate. typical_price negates only approximately (the mean
    of reflected prices is not the reflected mean: the error is of order the bar's range squared) and is treated as
    negating. volume, num_trades, rolling_vol (std of negated returns) and time features are unchanged.
    Raises ``ConfigError`` when high or low comes without its partner: its mirror image is not in the table.
    """
    index = {n: i for i, n in enumerate(names)}
    perm = np.arange(len(names))
    sign = np.ones(len(names), dtype=np.float32)
    partner = {"high": "low", "low": "high"}
    for i, name in enumerate(names):
        if name in partner:
            if partner[name] not in index:
                raise ConfigError(
                    f"features: '{name}' without '{partner[name]}' cannot be mirrored (the mirrored {name} is the "
                    f"negated {partner[name]}); add both to features.custom_columns or set train.mirror=false"
                )
            perm[i] = index[partner[name]]
            sign[i] = -1.0
        elif name in ("open", "close", "typical_price"):
            sign[i] = -1.0
        elif name not in ("volume", "num_trades", "rolling_vol", *TIME_CHANNELS):
            raise ConfigError(f"features: no mirror rule for feature '{name}'")
    return perm, sign
