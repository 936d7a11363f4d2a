"""Bars (+ funding, mark-price bars, the market's bars, the user's columns) -> the causal feature table
(``features.parquet``, layout in docs/design_notes.md), family by family (``diffquant.data.families``).

Every channel at bar ``t`` uses data known at the bar's close only (a bar's data is known at its close, where the
policy decides). Each rolling statistic is computed from its own window alone (no running sums), so a table that
starts later gives bit for bit the same features on every row past its first :func:`warmup_bars` bars: the paper
trader computes features from a short tail of bars (diffquant.deploy). The first bar is dropped: it has no previous
close. Which channels each family adds, in which order, and what they are: docs/features.md.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from diffquant.config import FeatureConfig
from diffquant.data.aggregate import check_grid
from diffquant.data.contracts import MINUTE_MS, from_ms, to_ms
from diffquant.data.families import FAMILIES, FeatureInputs
from diffquant.data.families.price import SOURCE_CHANNELS, TIME_CHANNELS, VOL_FLOOR, source_channels
from diffquant.errors import ConfigError

__all__ = [
    "FEATURE_PREFIX",
    "SOURCE_CHANNELS",
    "TIME_CHANNELS",
    "VOL_FLOOR",
    "build_features",
    "feature_columns",
    "feature_names",
    "features_from_inputs",
    "funding_per_bar",
    "mirror_spec",
    "settlements_per_bar",
    "source_channels",
    "warmup_bars",
]

FEATURE_PREFIX = "x_"


def feature_names(cfg: FeatureConfig, has_num_trades: bool) -> list[str]:
    """Channel order: the families' in registry order (price/volume first, as upstream)."""
    return [name for family in FAMILIES for name in family.channels(cfg, has_num_trades)]


def warmup_bars(cfg: FeatureConfig, timeframe_minutes: int) -> int:
    """Bars a table needs before its first row whose features equal those of the full history: the longest
    warm-up of the families that are on (at least 1: the first bar has no previous close)."""
    return max(family.warmup(cfg, timeframe_minutes) for family in FAMILIES)


def settlements_per_bar(open_ms: np.ndarray, funding: pd.DataFrame, timeframe_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Per bar: ``f_j`` (:func:`funding_per_bar`) and how many settlements fall in (open_j, open_j + tf]."""
    rate = funding_per_bar(open_ms, funding, timeframe_ms)
    ones = pd.DataFrame({"funding_time": funding["funding_time"], "funding_rate": np.ones(len(funding))})
    count = funding_per_bar(open_ms, ones, timeframe_ms).astype(np.int64)
    return rate, count


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


def build_features(
    bars: pd.DataFrame,
    funding: pd.DataFrame,
    cfg: FeatureConfig,
    timeframe_minutes: int,
    *,
    mark: pd.DataFrame | None = None,
    columns: pd.DataFrame | None = None,
    market: Mapping[str, pd.DataFrame] | None = None,
    symbol: str = "the asset",
) -> pd.DataFrame:
    """Canonical bars (+ funding events and what the other families read, all on the bars' timeframe) ->
    ``open_time, close, funding_rate, x_<name>...`` without the first bar (:func:`features_from_inputs`)."""
    open_ms = to_ms(bars["open_time"])
    rate, count = settlements_per_bar(open_ms, funding, timeframe_minutes * MINUTE_MS)
    inputs = FeatureInputs(bars, rate, count, mark, columns, market, symbol)
    return features_from_inputs(inputs, cfg, timeframe_minutes)


def features_from_inputs(inputs: FeatureInputs, cfg: FeatureConfig, timeframe_minutes: int) -> pd.DataFrame:
    """The feature table of ``inputs``: ``close`` stays a float64 price (the simulator's returns), ``funding_rate``
    is ``f_j``, features are float32. Raises ``ConfigError`` for a channel the inputs cannot serve."""
    bars = inputs.bars
    names = feature_names(cfg, "num_trades" in bars.columns)
    open_ms = to_ms(bars["open_time"])
    check_grid(
        open_ms, timeframe_minutes, "bars", "data.timeframe_minutes must be the bars' timeframe: re-run aggregate"
    )
    channels: dict[str, np.ndarray] = {}
    for family in FAMILIES:
        if family.channels(cfg, "num_trades" in bars.columns):
            channels.update(family.build(inputs, cfg, timeframe_minutes))
    out = pd.DataFrame(
        {
            "open_time": from_ms(open_ms[1:]),
            "close": bars["close"].to_numpy(dtype=np.float64)[1:],
            "funding_rate": np.asarray(inputs.funding_rate, dtype=np.float64)[1:],
        }
    )
    for name in names:
        out[FEATURE_PREFIX + name] = channels[name][1:].astype(np.float32)
    return out


def feature_columns(features: pd.DataFrame) -> list[str]:
    """The feature names (without the ``x_`` prefix) of a feature table, in column order."""
    return [c[len(FEATURE_PREFIX) :] for c in features.columns if c.startswith(FEATURE_PREFIX)]


def mirror_spec(names: list[str], cfg: FeatureConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """How each feature maps under the price reflection P -> c_ref²/P (log prices negate about log c_ref).

    ``mirrored[..., i] = sign[i] * x[..., perm[i]]``, each channel's rule declared by its family (``cfg``: the user
    columns' ``mirror``). Raises ``ConfigError`` when high or low comes without its partner (its mirror image is not
    in the table) or a channel belongs to no family.
    """
    cfg = cfg or FeatureConfig()
    owner = {name: family for family in FAMILIES for name in family.known_channels(cfg)}
    index = {n: i for i, n in enumerate(names)}
    perm = np.arange(len(names))
    sign = np.ones(len(names), dtype=np.float32)
    for i, name in enumerate(names):
        if name not in owner:
            raise ConfigError(f"features: no mirror rule for feature '{name}'")
        source, sign[i] = owner[name].mirror(name, cfg)
        if source not in index:
            raise ConfigError(
                f"features: '{name}' without '{source}' cannot be mirrored (the mirrored {name} is the "
                f"negated {source}); add both to features.custom_columns or set train.mirror=false"
            )
        perm[i] = index[source]
    return perm, sign
