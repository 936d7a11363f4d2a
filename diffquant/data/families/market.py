"""The market family: the market the asset moves with, on one clock (``features.market``).

Every member's close is read at the asset's own bar times (matched by open time), so all assets share the asset's
clock; R_m(t) = log(c_m(t) / c_m(t - k·tf)) is a member's log return over the last k bars (k = ``lookback_bars``),
defined when the asset has the bar k bars back and the member has both bars.

- ``market_return``: the equal-weight market return, the mean of R_m(t) over the members
  (``features.market.symbols``) that have it; 0 when none has;
- ``market_excess``: the asset's own k-bar log return minus market_return (0 without the bar k back);
- ``market_reference``: R of the reference asset (``features.market.reference``, BTC), 0 where it has none.

All three are log returns and negate in the price-reflected market. A member missing a bar (not yet listed, a gap)
drops out of the mean at that bar; nothing is filled in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from diffquant.config import FeatureConfig
from diffquant.data.contracts import MINUTE_MS, to_ms
from diffquant.data.families.base import Family, FeatureInputs
from diffquant.errors import ConfigError, DataError

CLOSE_PREFIX = "close_"  # model input: close_<SYMBOL>, each market asset's close on the asset's bar times


def market_symbols(cfg: FeatureConfig) -> list[str]:
    """The assets the family reads: the members, then the reference if it is not one (empty when off)."""
    m = cfg.market
    if not m.channels:
        return []
    return [*m.symbols, *([m.reference] if "reference" in m.channels and m.reference not in m.symbols else [])]


class Market(Family):
    name = "market"
    key = "features.market.channels"
    inputs = ("market",)

    def channels(self, cfg: FeatureConfig, has_num_trades: bool) -> list[str]:
        return [f"market_{c}" for c in cfg.market.channels]

    def warmup(self, cfg: FeatureConfig, timeframe_minutes: int) -> int:
        return cfg.market.lookback_bars if cfg.market.channels else 0

    def build(self, inputs: FeatureInputs, cfg: FeatureConfig, timeframe_minutes: int) -> dict[str, np.ndarray]:
        m = cfg.market
        open_ms = to_ms(inputs.bars["open_time"])
        back = open_ms - m.lookback_bars * timeframe_minutes * MINUTE_MS
        row = np.searchsorted(open_ms, back)
        has_back = (row < len(open_ms)) & (open_ms[np.minimum(row, len(open_ms) - 1)] == back)
        row = np.where(has_back, row, 0)

        def k_return(close: np.ndarray) -> np.ndarray:
            with np.errstate(invalid="ignore"):
                return np.where(has_back, np.log(close / close[row]), np.nan)

        closes = member_closes(inputs, cfg, open_ms)
        members = np.stack([k_return(closes[s]) for s in m.symbols], axis=1)
        counted = np.isfinite(members).sum(axis=1)
        market = np.divide(np.nansum(members, axis=1), counted, out=np.zeros(len(open_ms)), where=counted > 0)
        out = {}
        for channel in m.channels:
            if channel == "return":
                value = market
            elif channel == "excess":
                value = k_return(inputs.bars["close"].to_numpy(np.float64)) - market
            else:
                value = k_return(closes[m.reference])
            out[f"market_{channel}"] = np.where(np.isfinite(value), value, 0.0)
        return out

    def mirror(self, channel: str, cfg: FeatureConfig) -> tuple[str, float]:
        return channel, -1.0

    def model_columns(self, cfg: FeatureConfig) -> list[str]:
        return [CLOSE_PREFIX + s for s in market_symbols(cfg)]

    def to_model_columns(self, inputs: FeatureInputs, cfg: FeatureConfig) -> dict[str, np.ndarray]:
        if not cfg.market.channels:
            return {}
        closes = member_closes(inputs, cfg, to_ms(inputs.bars["open_time"]))
        return {CLOSE_PREFIX + s: closes[s] for s in market_symbols(cfg)}

    def from_model_columns(self, table: pd.DataFrame, cfg: FeatureConfig, where: str) -> dict[str, object]:
        symbols = market_symbols(cfg)
        if not symbols:
            return {}
        missing = [CLOSE_PREFIX + s for s in symbols if CLOSE_PREFIX + s not in table.columns]
        if missing:
            raise DataError(
                f"{where}: no column(s) {missing}; this policy's market features ({cfg.market.channels}) read each "
                "market asset's close on the asset's bar times (NaN where that asset has no bar)"
            )
        market = {}
        for s in symbols:
            close = table[CLOSE_PREFIX + s].to_numpy(np.float64)
            bad = ~np.isnan(close) & ~(np.isfinite(close) & (close > 0))
            if bad.any():
                raise DataError(
                    f"{where}: {CLOSE_PREFIX + s} at row(s) {np.flatnonzero(bad)[:5].tolist()} is not a price > 0"
                )
            present = ~np.isnan(close)
            market[s] = pd.DataFrame({"open_time": table["open_time"].to_numpy()[present], "close": close[present]})
        return {"market": market}


def member_closes(inputs: FeatureInputs, cfg: FeatureConfig, open_ms: np.ndarray) -> dict[str, np.ndarray]:
    """Each market asset's close at the asset's bar times (NaN where it has no bar); refuses one that is missing."""
    needed = market_symbols(cfg)
    given = inputs.market or {}
    missing = [s for s in needed if s not in given]
    if missing:
        raise ConfigError(
            f"features.market: no bars of {missing} for {inputs.symbol}'s market features; the market is "
            f"features.market.symbols {cfg.market.symbols} (and the reference {cfg.market.reference!r})"
        )
    out = {}
    for s in needed:
        ms = to_ms(given[s]["open_time"])
        close = given[s]["close"].to_numpy(np.float64)
        at = np.clip(np.searchsorted(ms, open_ms), 0, max(len(ms) - 1, 0))
        found = (ms[at] == open_ms) if len(ms) else np.zeros(len(open_ms), bool)
        out[s] = np.where(found, close[at] if len(ms) else np.nan, np.nan)
    return out
