"""The premium family: the perpetual's last price against its mark price (``features.premium``).

| channel | value at bar t |
|---|---|
| premium_last | log(close_t / mark close_t), the premium of the last trade over the exchange's fair price |
| premium_mean | mean of premium_last over the last M bars, M = ``mean_bars`` (fewer at the start) |

The mark price (index plus a damped basis) is what funding and liquidations use; a persistent premium is what the
funding rate then charges for. Every bar needs the mark bar of the same open time: the mark-price bars are
aggregated to the timeframe like the bars, and a bar without one is refused, naming it. Both channels negate in the
price-reflected market (log(c²/P / c²/M) = -log(P/M)).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from diffquant.config import SYMBOL_SETS, FeatureConfig
from diffquant.data.contracts import to_ms
from diffquant.data.families.base import Family, FeatureInputs
from diffquant.data.rolling import trailing_mean
from diffquant.errors import ConfigError, DataError

MARK_CLOSE = "mark_close"  # model input: the mark-price bar's close


class Premium(Family):
    name = "premium"
    key = "features.premium.channels"
    inputs = ("mark",)

    def channels(self, cfg: FeatureConfig, has_num_trades: bool) -> list[str]:
        return [f"premium_{c}" for c in cfg.premium.channels]

    def warmup(self, cfg: FeatureConfig, timeframe_minutes: int) -> int:
        return cfg.premium.mean_bars - 1 if "mean" in cfg.premium.channels else 0

    def build(self, inputs: FeatureInputs, cfg: FeatureConfig, timeframe_minutes: int) -> dict[str, np.ndarray]:
        mark = mark_closes(inputs, cfg)
        premium = np.log(inputs.bars["close"].to_numpy(np.float64) / mark)
        out = {}
        for channel in cfg.premium.channels:
            out[f"premium_{channel}"] = premium if channel == "last" else trailing_mean(premium, cfg.premium.mean_bars)
        return out

    def mirror(self, channel: str, cfg: FeatureConfig) -> tuple[str, float]:
        return channel, -1.0

    def model_columns(self, cfg: FeatureConfig) -> list[str]:
        return [MARK_CLOSE] if cfg.premium.channels else []

    def to_model_columns(self, inputs: FeatureInputs, cfg: FeatureConfig) -> dict[str, np.ndarray]:
        return {MARK_CLOSE: mark_closes(inputs, cfg)} if cfg.premium.channels else {}

    def from_model_columns(self, table: pd.DataFrame, cfg: FeatureConfig, where: str) -> dict[str, object]:
        if not cfg.premium.channels:
            return {}
        if MARK_CLOSE not in table.columns:
            raise DataError(
                f"{where}: no column {MARK_CLOSE}; this policy's premium features ({cfg.premium.channels}) read the "
                "mark-price bar's close of every bar"
            )
        close = table[MARK_CLOSE].to_numpy(np.float64)
        bad = ~np.isfinite(close) | ~(close > 0)
        if bad.any():
            raise DataError(f"{where}: {MARK_CLOSE} at row(s) {np.flatnonzero(bad)[:5].tolist()} is not a price > 0")
        return {"mark": pd.DataFrame({"open_time": table["open_time"].to_numpy(), "close": close})}


def mark_closes(inputs: FeatureInputs, cfg: FeatureConfig) -> np.ndarray:
    """The mark close of every bar; refuses an asset without mark bars, or a bar without its mark bar."""
    if inputs.mark is None:
        raise ConfigError(
            f"features.premium.channels {cfg.premium.channels}: {inputs.symbol} has no mark-price bars at this "
            f"timeframe. The bundled data ships them at 1 hour for {', '.join(SYMBOL_SETS['mark'])} "
            "(data.timeframe_minutes a multiple of 60); the file source reads data.mark_path. Remove the premium "
            "channels or trade assets with mark bars"
        )
    bar_ms, mark_ms = to_ms(inputs.bars["open_time"]), to_ms(inputs.mark["open_time"])
    at = np.clip(np.searchsorted(mark_ms, bar_ms), 0, max(len(mark_ms) - 1, 0))
    found = (mark_ms[at] == bar_ms) if len(mark_ms) else np.zeros(len(bar_ms), bool)
    if not found.all():
        first = inputs.bars["open_time"].iloc[int(np.flatnonzero(~found)[0])]
        span = f"{inputs.mark['open_time'].iloc[0]} .. {inputs.mark['open_time'].iloc[-1]}" if len(mark_ms) else "none"
        raise DataError(
            f"features.premium.channels: {inputs.symbol} has no mark-price bar for {(~found).sum()} of its "
            f"{len(bar_ms)} bars, the first opening {first} (its mark bars span {span}); start the data inside the "
            "mark bars' span (data.start) or drop the premium channels"
        )
    return inputs.mark["close"].to_numpy(np.float64)[at]
