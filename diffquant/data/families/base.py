"""What a feature family is: its inputs, channels, warm-up, transform, mirror rule and model-input columns.

Every consumer reads these declarations and never keeps a list of its own: the feature builder (which channels, in
which order), the training's mirror map, the look-ahead check (which inputs to alter after a cut), the bundle the
paper trader and MLflow serve (how many bars to warm up, which input columns its schema has).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import pandas as pd

from diffquant.config import FeatureConfig

Input = Literal["bars", "funding", "mark", "market", "columns"]
"""What a family reads: the asset's bars, its funding settlements, its mark-price bars, the market's bars, the
user's own columns."""


@dataclass(frozen=True)
class FeatureInputs:
    """Everything the families read, on the asset's bars at ``data.timeframe_minutes`` (one row per bar).

    ``funding_rate``/``settlements``: per bar, the sum and the number of the funding settlements in (open, close]
    (the simulator charges the sum; a settlement of rate 0 still counts). ``mark``: mark-price bars (``open_time``,
    ``close``), matched to the bars by open time. ``columns``: ``open_time`` and the user's columns, one row per bar.
    ``market``: symbol -> that asset's bars (``open_time``, ``close``): the market's members and its reference.
    """

    bars: pd.DataFrame
    funding_rate: np.ndarray
    settlements: np.ndarray
    mark: pd.DataFrame | None = None
    columns: pd.DataFrame | None = None
    market: Mapping[str, pd.DataFrame] | None = None
    symbol: str = "the asset"


class Family:
    """One family of channels; subclasses fill in the declarations. Channel names are unique across families."""

    name: ClassVar[str]
    key: ClassVar[str]  # where it is switched on in params.yaml
    inputs: ClassVar[tuple[Input, ...]]

    def channels(self, cfg: FeatureConfig, has_num_trades: bool) -> list[str]:
        """The family's channels in table order; empty when it is off."""
        raise NotImplementedError

    def known_channels(self, cfg: FeatureConfig) -> list[str]:
        """Every channel this family can give under ``cfg`` (a table's channels are looked up here)."""
        return self.channels(cfg, has_num_trades=True)

    def warmup(self, cfg: FeatureConfig, timeframe_minutes: int) -> int:
        """Bars before the first row whose channels equal the full history's (for a table that starts later)."""
        raise NotImplementedError

    def build(self, inputs: FeatureInputs, cfg: FeatureConfig, timeframe_minutes: int) -> dict[str, np.ndarray]:
        """Each channel's value at every bar of ``inputs.bars`` (float64; the builder drops the first bar)."""
        raise NotImplementedError

    def mirror(self, channel: str, cfg: FeatureConfig) -> tuple[str, float]:
        """In the price-reflected market (P -> c²/P, where funding flips sign too) this channel equals ``sign`` times
        the returned channel of the original (itself, except high <-> low)."""
        raise NotImplementedError

    def model_columns(self, cfg: FeatureConfig) -> list[str]:
        """Columns the served model's input table needs beside the bars (its MLflow input schema)."""
        return []

    def to_model_columns(self, inputs: FeatureInputs, cfg: FeatureConfig) -> dict[str, np.ndarray]:
        """Those columns' values on the bars' rows, from the pipeline's inputs."""
        return {}

    def from_model_columns(self, table: pd.DataFrame, cfg: FeatureConfig, where: str) -> dict[str, object]:
        """``FeatureInputs`` fields from a model-input table's columns (checked; errors name ``where``)."""
        return {}
