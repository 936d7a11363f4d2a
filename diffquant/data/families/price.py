"""The price/volume family: the asset's own bars (the channels the policy has seen from the start).

| channel | value at bar t (c = close, v = volume or trade count) |
|---|---|
| open, high, low, close | log(price_t / c_{t-1}) |
| volume, num_trades | log(v_t / mean(v_{t-w+1..t}) + 1), w = ``vol_window`` (0 when the mean is 0) |
| typical_price | log(((h + l + c) / 3)_t / c_{t-1}) |
| rolling_vol | log(max(std_pop(r_{t-w+1..t}), 1e-6)), r = close log-return (r_0 = 0), w = ``vol_window_vol`` |
| hour_sin/cos, dow_sin/cos | sin/cos(2π·hour/24), sin/cos(2π·weekday/7) of the bar's CLOSE time (the decision) |

Prices are validated > 0, so no epsilon is needed (upstream added 1e-10 everywhere). Rolling windows count rows, so
after a gap they reach across it (as in upstream): the first bar after a gap carries the log-return across the gap,
and the next rolling windows include bars from before it. That is causal, not leakage.
"""

from __future__ import annotations

import numpy as np

from diffquant.config import FeatureConfig
from diffquant.data.contracts import MINUTE_MS, PRICE_COLUMNS, to_ms
from diffquant.data.families.base import Family, FeatureInputs
from diffquant.data.rolling import trailing_windows
from diffquant.errors import ConfigError

SOURCE_CHANNELS = ("open", "high", "low", "close", "volume", "num_trades")
PRESETS = {
    "ohlc": ("open", "high", "low", "close"),
    "ohlcv": ("open", "high", "low", "close", "volume"),
    "full": SOURCE_CHANNELS,
}
TIME_CHANNELS = ("hour_sin", "hour_cos", "dow_sin", "dow_cos")
VOL_FLOOR = 1e-6  # std floor before the log: flat stretches (exchange maintenance) would give -inf
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)
PARTNER = {"high": "low", "low": "high"}  # the reflected high is the reflected low


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


def _volume_channel(v: np.ndarray, window: int) -> np.ndarray:
    mean = np.nanmean(trailing_windows(v, window), axis=1)
    # v >= 0 and v_t is in its own window, so mean == 0 only in an all-zero window (v_t == 0): ratio 0.
    ratio = np.divide(v, mean, out=np.zeros_like(v), where=mean > 0)
    return np.log1p(ratio)


def _rolling_vol(close: np.ndarray, window: int) -> np.ndarray:
    r = np.diff(np.log(close), prepend=np.log(close[:1]))  # r_0 = 0
    std = np.nanstd(trailing_windows(r, window), axis=1)  # population std (ddof 0)
    return np.log(np.maximum(std, VOL_FLOOR))


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


class Price(Family):
    name = "price"
    key = "features.preset"
    inputs = ("bars",)

    def channels(self, cfg: FeatureConfig, has_num_trades: bool) -> list[str]:
        """Source channels, then typical_price, rolling_vol, time features (as upstream)."""
        names = list(source_channels(cfg, has_num_trades))
        if cfg.typical_price:
            names.append("typical_price")
        if cfg.rolling_vol:
            names.append("rolling_vol")
        if cfg.time_features:
            names.extend(TIME_CHANNELS)
        return names

    def known_channels(self, cfg: FeatureConfig) -> list[str]:
        return [*SOURCE_CHANNELS, "typical_price", "rolling_vol", *TIME_CHANNELS]

    def warmup(self, cfg: FeatureConfig, timeframe_minutes: int) -> int:
        """The first bar has no previous close; a volume channel's window of w bars needs the w - 1 before it; the
        rolling volatility's w returns need the w closes before it (a table's first return is set to 0)."""
        needs = [1]
        if {"volume", "num_trades"} & set(source_channels(cfg, has_num_trades=True)):
            needs.append(cfg.vol_window - 1)
        if cfg.rolling_vol:
            needs.append(cfg.vol_window_vol)
        return max(needs)

    def build(self, inputs: FeatureInputs, cfg: FeatureConfig, timeframe_minutes: int) -> dict[str, np.ndarray]:
        bars = inputs.bars
        close = bars["close"].to_numpy(dtype=np.float64)
        prev_close = np.r_[np.nan, close[:-1]]  # row 0 is dropped by the builder
        channels: dict[str, np.ndarray] = {}
        for name in source_channels(cfg, "num_trades" in bars.columns):
            if name in PRICE_COLUMNS:
                channels[name] = np.log(bars[name].to_numpy(dtype=np.float64) / prev_close)
            else:
                channels[name] = _volume_channel(bars[name].to_numpy(dtype=np.float64), cfg.vol_window)
        if cfg.typical_price:
            typical = (bars["high"].to_numpy(np.float64) + bars["low"].to_numpy(np.float64) + close) / 3
            channels["typical_price"] = np.log(typical / prev_close)
        if cfg.rolling_vol:
            channels["rolling_vol"] = _rolling_vol(close, cfg.vol_window_vol)
        if cfg.time_features:
            channels.update(_time_channels(to_ms(bars["open_time"]), timeframe_minutes * MINUTE_MS))
        return channels

    def mirror(self, channel: str, cfg: FeatureConfig) -> tuple[str, float]:
        """Log-returns against the previous close negate; high and low swap and negate. typical_price negates only
        approximately (the mean of reflected prices is not the reflected mean: an error of the order of the bar's
        range squared) and is treated as negating. Volume, trade counts, rolling_vol and time stay."""
        if channel in PARTNER:
            return PARTNER[channel], -1.0
        if channel in ("open", "close", "typical_price"):
            return channel, -1.0
        return channel, 1.0
