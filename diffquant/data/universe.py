"""One asset's raw data -> its feature table, the chain of the aggregate and features stages for every asset of a
universe (the walk-forward study's data stage uses it; the one-asset stages call the same two functions)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from diffquant.config import Config
from diffquant.data.aggregate import aggregate
from diffquant.data.features import build_features
from diffquant.data.quality import quality_report
from diffquant.data.sources import RawData
from diffquant.errors import ConfigError


def asset_features(raw: RawData, cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Bars at ``data.timeframe_minutes``, the feature table and the asset's data-quality report."""
    symbol, minutes = raw.meta["symbol"], raw.meta["source_minutes"]
    if cfg.sim.funding and not raw.meta["funding_available"]:
        raise ConfigError(
            f"sim.funding is true but data.source={raw.meta['source']!r} gives no funding rates for {symbol}: "
            "provide data.funding_path or set sim.funding=false"
        )
    bars, stats = aggregate(raw.bars, minutes, cfg.data.timeframe_minutes)
    table = build_features(bars, raw.funding, cfg.features, cfg.data.timeframe_minutes)
    report = quality_report(raw.bars, minutes)
    report["aggregate"] = {"bars": len(bars), "source_bars": stats.source_bars, "dropped": stats.buckets_dropped}
    return bars, table, report
