"""The funding family: what the settlements known at each bar's close say (``features.funding``).

A settlement belongs to the bar in whose (open, close] it falls, the bar whose holder pays it, and is known at that
bar's close; a bar's settled rate is the sum of its settlements (one per bar at timeframes up to the settlement
interval). With s_1 .. s_k the settlements at or before bar t (rates r, bar-close times τ):

- ``funding_last``: r_k, the last settled rate (0 before the first settlement, as for the next three);
- ``funding_mean``: mean(r_{k-N+1..k}), N = ``mean_settlements`` (fewer at the start);
- ``funding_zscore``: (r_k - mean) / max(std_pop, 1e-5) over r_{k-W+1..k}, W = ``zscore_settlements``;
- ``funding_to_next``: (τ_k + (τ_k - τ_{k-1}) - close_t) / (τ_k - τ_{k-1}), at least 0: the share of the last
  interval left until the next settlement if the schedule holds (0 before two settlements);
- ``funding_paid_24h``: the sum of the rates settled in the last 1440 / tf bars (a long's funding over a day).

Rates flip sign in the price-reflected market (longs and shorts trade places), so every rate channel negates under the
training's mirror; the time to the next settlement does not.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from diffquant.config import FeatureConfig
from diffquant.data.contracts import MINUTE_MS, to_ms
from diffquant.data.families.base import Family, FeatureInputs
from diffquant.data.rolling import trailing_mean, trailing_sum, trailing_zscore
from diffquant.errors import DataError

ZSCORE_FLOOR = 1e-5  # 0.1 bp per settlement: rates sit at one value for weeks (Binance's 1 bp floor), std 0
DAY_MINUTES = 1440
RATE = "funding_rate"  # model input: the sum of the rates settled during the bar (what the holder pays)
COUNT = "funding_settlements"  # model input: how many settled during it (a settlement of rate 0 counts)


def day_bars(timeframe_minutes: int) -> int:
    """Bars whose closes lie within the last 24 hours of a bar's close."""
    return max(1, DAY_MINUTES // timeframe_minutes)


class Funding(Family):
    name = "funding"
    key = "features.funding.channels"
    inputs = ("funding",)

    def channels(self, cfg: FeatureConfig, has_num_trades: bool) -> list[str]:
        return [f"funding_{c}" for c in cfg.funding.channels]

    def warmup(self, cfg: FeatureConfig, timeframe_minutes: int) -> int:
        """The settlements a channel reads (the last N, W, one, or two for the interval) span at most that many
        settlement intervals of ``interval_hours``; the 24-hour sum its window of bars."""
        f = cfg.funding
        needs = [0]
        settlements = {"last": 1, "mean": f.mean_settlements, "zscore": f.zscore_settlements, "to_next": 2}
        for channel in f.channels:
            if channel == "paid_24h":
                needs.append(day_bars(timeframe_minutes))
            else:
                needs.append(settlements[channel] * math.ceil(f.interval_hours * 60 / timeframe_minutes))
        return max(needs)

    def build(self, inputs: FeatureInputs, cfg: FeatureConfig, timeframe_minutes: int) -> dict[str, np.ndarray]:
        f = cfg.funding
        n = len(inputs.bars)
        rate = np.asarray(inputs.funding_rate, dtype=np.float64)
        settled = np.flatnonzero(np.asarray(inputs.settlements) > 0)  # the bars holding a settlement
        r = rate[settled]
        tf_ms = timeframe_minutes * MINUTE_MS
        when = to_ms(inputs.bars["open_time"])[settled] + tf_ms  # known at the bar's close
        k = np.searchsorted(settled, np.arange(n), side="right")  # settlements at or before each bar
        known = k > 0
        last = np.maximum(k - 1, 0)

        def per_bar(per_settlement: np.ndarray) -> np.ndarray:
            return np.where(known, per_settlement[last], 0.0) if len(r) else np.zeros(n)

        out: dict[str, np.ndarray] = {}
        for channel in f.channels:
            if channel == "last":
                out["funding_last"] = per_bar(r)
            elif channel == "mean":
                out["funding_mean"] = per_bar(trailing_mean(r, f.mean_settlements))
            elif channel == "zscore":
                out["funding_zscore"] = per_bar(trailing_zscore(r, f.zscore_settlements, ZSCORE_FLOOR))
            elif channel == "to_next":
                out["funding_to_next"] = _to_next(when, k, to_ms(inputs.bars["open_time"]) + tf_ms)
            else:
                out["funding_paid_24h"] = trailing_sum(rate, day_bars(timeframe_minutes))
        return out

    def mirror(self, channel: str, cfg: FeatureConfig) -> tuple[str, float]:
        return channel, 1.0 if channel == "funding_to_next" else -1.0

    def model_columns(self, cfg: FeatureConfig) -> list[str]:
        return [RATE, COUNT] if cfg.funding.channels else []

    def to_model_columns(self, inputs: FeatureInputs, cfg: FeatureConfig) -> dict[str, np.ndarray]:
        if not cfg.funding.channels:
            return {}
        return {RATE: np.asarray(inputs.funding_rate, np.float64), COUNT: np.asarray(inputs.settlements, np.float64)}

    def from_model_columns(self, table: pd.DataFrame, cfg: FeatureConfig, where: str) -> dict[str, object]:
        if not cfg.funding.channels:
            return {}
        missing = [c for c in (RATE, COUNT) if c not in table.columns]
        if missing:
            raise DataError(
                f"{where}: no column(s) {missing}; this policy's funding features ({cfg.funding.channels}) read "
                f"{RATE} (the rates settled during each bar) and {COUNT} (how many)"
            )
        rate = table[RATE].to_numpy(np.float64)
        count = table[COUNT].to_numpy(np.float64)
        bad = ~np.isfinite(rate) | ~np.isfinite(count) | (count < 0) | (count != np.round(count))
        if bad.any():
            raise DataError(
                f"{where}: {RATE} / {COUNT} at row(s) {np.flatnonzero(bad)[:5].tolist()} are not finite, or the "
                "count is not a whole number >= 0"
            )
        return {"funding_rate": rate, "settlements": count.astype(np.int64)}


def _to_next(when: np.ndarray, k: np.ndarray, close_ms: np.ndarray) -> np.ndarray:
    """The share of the last settlement interval left until the next one, per bar (0 before two settlements)."""
    out = np.zeros(len(k))
    ok = k >= 2
    if not ok.any():
        return out
    last, before = when[k[ok] - 1], when[k[ok] - 2]
    interval = (last - before).astype(np.float64)
    out[ok] = np.maximum(last + interval - close_ms[ok], 0) / interval
    return out
