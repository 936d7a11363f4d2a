"""The feature families, in table order: price/volume, funding, premium, market, the user's columns.

``FAMILIES`` is the one registry (docs/features.md): the builder, the mirror map, the look-ahead check and the
served model's input schema all iterate it. Every family but price is off by default.
"""

from __future__ import annotations

from diffquant.data.families.base import Family, FeatureInputs, Input
from diffquant.data.families.columns import Columns
from diffquant.data.families.funding import Funding
from diffquant.data.families.market import Market, market_symbols
from diffquant.data.families.premium import Premium
from diffquant.data.families.price import Price

FAMILIES: tuple[Family, ...] = (Price(), Funding(), Premium(), Market(), Columns())

__all__ = ["FAMILIES", "Family", "FeatureInputs", "Input", "market_symbols"]
