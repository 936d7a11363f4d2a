"""The user's own columns: any numeric series stamped like the bars (``features.columns``; file source only).

Each declared column (open interest, order flow, sentiment, ...) is aggregated to the timeframe with its bars (its
``aggregate``: ``last``, a level, or ``sum``, a flow) and made stationary by its ``transform``:

| transform | channel ``user_<name>`` at bar t |
|---|---|
| raw | x_t |
| log_diff | log(x_t / x_{t-1}) (values must be > 0; checked when the file is read) |
| zscore | (x_t - mean) / std_pop over the last w bars, w = ``window`` (0 where the window is constant) |

Its ``mirror`` says what the column is in the price-reflected market the training mirrors batches into: ``keep`` (a
level such as open interest) or ``negate`` (a signed flow such as buy minus sell volume).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from diffquant.config import FeatureConfig
from diffquant.data.contracts import to_ms, validate_user_columns
from diffquant.data.families.base import Family, FeatureInputs
from diffquant.data.rolling import trailing_zscore
from diffquant.errors import DataError

PREFIX = "user_"


class Columns(Family):
    name = "columns"
    key = "features.columns"
    inputs = ("columns",)

    def channels(self, cfg: FeatureConfig, has_num_trades: bool) -> list[str]:
        return [PREFIX + c.name for c in cfg.columns]

    def warmup(self, cfg: FeatureConfig, timeframe_minutes: int) -> int:
        needs = {"raw": 0, "log_diff": 1}
        return max((c.window - 1 if c.transform == "zscore" else needs[c.transform] for c in cfg.columns), default=0)

    def build(self, inputs: FeatureInputs, cfg: FeatureConfig, timeframe_minutes: int) -> dict[str, np.ndarray]:
        table = aligned(inputs, cfg)
        out = {}
        for c in cfg.columns:
            x = table[c.name].to_numpy(np.float64)
            if c.transform == "raw":
                value = x
            elif c.transform == "log_diff":
                value = np.log(x / np.r_[np.nan, x[:-1]])
            else:
                value = trailing_zscore(x, c.window)
            out[PREFIX + c.name] = value
        return out

    def mirror(self, channel: str, cfg: FeatureConfig) -> tuple[str, float]:
        (column,) = [c for c in cfg.columns if PREFIX + c.name == channel]
        return channel, -1.0 if column.mirror == "negate" else 1.0

    def model_columns(self, cfg: FeatureConfig) -> list[str]:
        return [c.name for c in cfg.columns]

    def to_model_columns(self, inputs: FeatureInputs, cfg: FeatureConfig) -> dict[str, np.ndarray]:
        if not cfg.columns:
            return {}
        table = aligned(inputs, cfg)
        return {c.name: table[c.name].to_numpy(np.float64) for c in cfg.columns}

    def from_model_columns(self, table: pd.DataFrame, cfg: FeatureConfig, where: str) -> dict[str, object]:
        if not cfg.columns:
            return {}
        names = [c.name for c in cfg.columns]
        positive = tuple(c.name for c in cfg.columns if c.transform == "log_diff")
        values = validate_user_columns(table, names, where, positive)
        values.insert(0, "open_time", table["open_time"].to_numpy())
        return {"columns": values}


def aligned(inputs: FeatureInputs, cfg: FeatureConfig) -> pd.DataFrame:
    """The user's columns row for row with the bars (the same open times), or a ``DataError``."""
    names = [c.name for c in cfg.columns]
    table = inputs.columns
    if table is None or any(n not in table.columns for n in names):
        have = [] if table is None else [c for c in table.columns if c != "open_time"]
        raise DataError(
            f"features.columns {names}: {inputs.symbol}'s data carries the user columns {have}; give data.source "
            "'file' with those columns in data.path"
        )
    bar_ms, own_ms = to_ms(inputs.bars["open_time"]), to_ms(table["open_time"])
    if not np.array_equal(bar_ms, own_ms):
        raise DataError(
            f"features.columns: {inputs.symbol}'s user columns are not stamped like its bars ({len(own_ms)} rows "
            f"against {len(bar_ms)} bars); they must come from the bars' own rows"
        )
    return table.reset_index(drop=True)
