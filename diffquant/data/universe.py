"""Every asset's raw data -> its tables at the timeframe, feature table and data-quality report: the chain of the
aggregate and features stages for every asset of a universe (the walk-forward study's data stage uses it; the
one-asset stages call the same functions).

The market family's assets are aggregated once and shared: every asset reads the same market on its own clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from diffquant.config import Config
from diffquant.data.features import features_from_inputs
from diffquant.data.inputs import Tables, at_timeframe, feature_inputs, load_assets, market_bars
from diffquant.data.quality import quality_report
from diffquant.data.sources import RawData
from diffquant.errors import ConfigError


@dataclass(frozen=True)
class AssetData:
    tables: Tables  # at the timeframe
    features: pd.DataFrame
    report: dict[str, Any]


def universe_features(
    cfg: Config, root: Path
) -> tuple[dict[str, RawData], dict[str, AssetData], dict[str, pd.DataFrame] | None]:
    """Every asset of the universe (``data.symbols``): its raw data, its tables and features at the timeframe; and
    the market's bars at the timeframe (None when the market family is off)."""
    assets, market_raw = load_assets(cfg, root, cfg.data.universe)
    market = market_bars(market_raw, cfg.data.timeframe_minutes)
    return assets, {s: asset_features(raw, cfg, market) for s, raw in assets.items()}, market


def asset_features(raw: RawData, cfg: Config, market: dict[str, pd.DataFrame] | None = None) -> AssetData:
    """One asset's tables at ``data.timeframe_minutes``, its feature table and its data-quality report."""
    symbol, minutes = raw.meta["symbol"], raw.meta["source_minutes"]
    if cfg.sim.funding and not raw.meta["funding_available"]:
        raise ConfigError(
            f"sim.funding is true but data.source={raw.meta['source']!r} gives no funding rates for {symbol}: "
            "provide data.funding_path or set sim.funding=false"
        )
    tf = cfg.data.timeframe_minutes
    tables, stats = at_timeframe(raw, cfg.features, tf)
    table = features_from_inputs(feature_inputs(tables, raw.funding, tf, market, symbol), cfg.features, tf)
    report = quality_report(raw.bars, minutes)
    report["aggregate"] = {"bars": len(tables.bars), "source_bars": stats.source_bars, "dropped": stats.buckets_dropped}
    return AssetData(tables, table, report)
