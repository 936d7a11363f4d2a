"""Real shipped data for the feature families' tests: three assets with mark-price bars, one hour, from 2025-07-01.

Loaded once per session (``functools.cache``); a test that modifies a table copies it first.
"""

from __future__ import annotations

import functools
from typing import Any

from diffquant.config import Config, from_dict
from diffquant.data.inputs import load_assets, market_bars
from diffquant.data.sources import RawData
from tests.repo_copy import REPO

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
START = "2025-07-01"
ALL_CHANNELS: dict[str, Any] = {
    "funding": {"channels": ["last", "mean", "zscore", "to_next", "paid_24h"], "zscore_settlements": 30},
    "premium": {"channels": ["last", "mean"]},
    "market": {"channels": ["return", "excess", "reference"]},
}


def config(features: dict[str, Any] | None = None, **data: Any) -> Config:
    """The three assets at one hour from ``START``, with ``features`` (default: every family but user columns)."""
    return from_dict(
        {
            "data": {"symbols": SYMBOLS, "timeframe_minutes": 60, "start": START, **data},
            "features": ALL_CHANNELS if features is None else features,
        }
    )


@functools.cache
def raws() -> tuple[dict[str, RawData], dict[str, RawData]]:
    """Each asset's source data (bars, funding, mark bars) and the market's (the same three)."""
    return load_assets(config(), REPO, SYMBOLS)


@functools.cache
def market_60() -> dict[str, Any]:
    return market_bars(raws()[1], 60)
