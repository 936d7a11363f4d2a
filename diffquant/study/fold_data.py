"""A fold's data: every asset's feature table cut to the fold's train samples and its val and test series.

The table is cut at the fold's test end first, so nothing after the fold can reach it, and every array of an asset
is hashed: the hash of train + val identifies the models, the hash of all of it the fold's results. An asset whose
data does not cover the fold (listed later, or ending earlier) is left out, with the reason kept for the report;
a fold that no asset covers is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from diffquant.config import Config
from diffquant.data.contracts import to_ms
from diffquant.data.splits import Samples, Series, cut_windows
from diffquant.errors import ConfigError
from diffquant.folds import Fold


def array_digest(*records: Samples | Series) -> str:
    """sha256 (16 hex) of every array of the records, in order."""
    h = hashlib.sha256()
    for record in records:
        for f in fields(record):
            h.update(np.ascontiguousarray(np.asarray(getattr(record, f.name))).tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class AssetFold:
    samples: Samples
    train_series: Series
    val: Series
    test: Series

    @property
    def model_digest(self) -> str:
        """What the models of this asset learn from and are selected on: train and val, never test."""
        return array_digest(self.samples, self.val)

    @property
    def digest(self) -> str:
        return array_digest(self.samples, self.train_series, self.val, self.test)


@dataclass(frozen=True, eq=False)
class FoldData:
    fold: Fold
    assets: dict[str, AssetFold]  # in universe order
    excluded: dict[str, str]  # symbol -> why it is not in this fold


def fold_keys(fold: Fold) -> dict[str, tuple[str, str]]:
    """How error messages name the fold's window bounds."""
    return {w: (f"fold {fold.name} {w} start", f"fold {fold.name} {w} end") for w in ("train", "val", "test")}


def fold_data(fold: Fold, tables: dict[str, pd.DataFrame], cfg: Config) -> FoldData:
    """Cut every asset's feature table for ``fold``; ``ConfigError`` when no asset has data for it."""
    bounds = fold.bounds_ms(cfg.data.timeframe_minutes)
    assets, excluded = {}, {}
    for symbol, table in tables.items():
        known = table[to_ms(table["open_time"]) < bounds["test"][1]]  # nothing after the fold's test end
        try:
            samples, series, _ = cut_windows(
                known, bounds, fold_keys(fold), cfg.window, cfg.sim.execution_lag_bars, cfg.data.timeframe_minutes
            )
        except ConfigError as exc:
            excluded[symbol] = str(exc)
            continue
        assets[symbol] = AssetFold(samples, series["train_series"], series["val"], series["test"])
    if not assets:
        reasons = "; ".join(f"{s}: {why}" for s, why in excluded.items())
        raise ConfigError(
            f"fold {fold.name} (test {fold.test[0]:%Y-%m-%d} .. {fold.test[1]:%Y-%m-%d}): no asset of data.symbols "
            f"has data for it ({reasons}). Move folds.first_test / folds.train_start inside the data"
        )
    return FoldData(fold, assets, excluded)
