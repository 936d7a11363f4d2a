"""A fold's data: every asset's feature table cut to the fold's train samples and its val and test series.

The table is cut at the fold's test end first, so nothing after the fold can reach it, and every array of an asset
is hashed: the hash of train + val identifies the models, the hash of all of it the fold's results. An asset whose
data does not cover the fold (listed later, or ending earlier) is left out, with the reason kept for the report;
a fold that no asset covers is refused.

The split stage writes every fold's cut (:func:`write_folds`): ``<split>/plan.json`` (the folds, their assets, who
was left out and why) and ``<split>/<fold>/<SYMBOL>/{train,train_series,val,test}.npz``; every later stage reads
them back with :func:`read_folds`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffquant.config import Config
from diffquant.data.contracts import to_ms
from diffquant.data.splits import SPLIT_KEYS, Samples, Series, cut_windows
from diffquant.errors import ConfigError, DataError
from diffquant.folds import Fold, plan_folds
from diffquant.io import read_json, write_json

PLAN_JSON = "plan.json"
# AssetFold field -> (file stem, record type) in a fold's asset folder
RECORDS = {
    "samples": ("train", Samples),
    "train_series": ("train_series", Series),
    "val": ("val", Series),
    "test": ("test", Series),
}


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
    stats: dict[str, Any] = field(default_factory=dict)  # bars, gaps and samples of each window (the split's metrics)

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


def fold_keys(fold: Fold, cfg: Config) -> dict[str, tuple[str, str]]:
    """How error messages name the fold's window bounds: the ``split:`` keys in the ``single`` scheme (its folds are
    the split's quarters), else the fold's own."""
    if cfg.folds.scheme == "single":
        quarter = "test" if fold.test[0] == cfg.split.boundaries()["test"][0] else "backtest"
        return {"train": SPLIT_KEYS["train"], "val": SPLIT_KEYS["val"], "test": SPLIT_KEYS[quarter]}
    return {w: (f"fold {fold.name} {w} start", f"fold {fold.name} {w} end") for w in ("train", "val", "test")}


def fold_data(fold: Fold, tables: dict[str, pd.DataFrame], cfg: Config) -> FoldData:
    """Cut every asset's feature table for ``fold``; ``ConfigError`` when no asset has data for it."""
    bounds = fold.bounds_ms(cfg.data.timeframe_minutes)
    assets, excluded = {}, {}
    for symbol, table in tables.items():
        known = table[to_ms(table["open_time"]) < bounds["test"][1]]  # nothing after the fold's test end
        try:
            samples, series, stats = cut_windows(
                known, bounds, fold_keys(fold, cfg), cfg.window, cfg.sim.execution_lag_bars, cfg.data.timeframe_minutes
            )
        except ConfigError as exc:
            excluded[symbol] = str(exc)
            continue
        assets[symbol] = AssetFold(samples, series["train_series"], series["val"], series["test"], stats)
    if not assets:
        reasons = "; ".join(f"{s}: {why}" for s, why in excluded.items())
        where = "the split: dates" if cfg.folds.scheme == "single" else "folds.first_test / folds.train_start"
        raise ConfigError(
            f"fold {fold.name} (test {fold.test[0]:%Y-%m-%d} .. {fold.test[1]:%Y-%m-%d}): no asset of data.symbols "
            f"has data for it ({reasons}). Move {where} inside the data"
        )
    return FoldData(fold, assets, excluded)


def cut_folds(cfg: Config, tables: dict[str, pd.DataFrame]) -> list[FoldData]:
    """Every fold of ``folds:`` cut from every asset's feature table, in test order."""
    return [fold_data(fold, tables, cfg) for fold in plan_folds(cfg.folds, cfg.split)]


def write_folds(folds: list[FoldData], out: Path) -> None:
    """Each fold's cut as ``.npz`` files, then ``plan.json`` (last: a split without it is not done)."""
    for data in folds:
        for symbol, asset in data.assets.items():
            for name, (stem, _) in RECORDS.items():
                getattr(asset, name).save(out / data.fold.name / symbol / f"{stem}.npz")
    plan = [{**d.fold.describe(), "assets": list(d.assets), "excluded": d.excluded} for d in folds]
    write_json(out / PLAN_JSON, {"folds": plan})


def read_folds(split: Path) -> list[FoldData]:
    """What :func:`write_folds` wrote; ``DataError`` naming the file when it is missing or of another layout."""
    return [_read_fold(split, entry) for entry in _plan(split)]


def read_newest_fold(split: Path) -> FoldData:
    """The last fold of the plan only (what a command that trades or checks the newest models needs)."""
    plan = _plan(split)
    if not plan:
        raise DataError(f"{split / PLAN_JSON}: the plan holds no fold; re-run the split stage (dvc repro split)")
    return _read_fold(split, plan[-1])


def _plan(split: Path) -> list[dict]:
    plan = read_json(split / PLAN_JSON, "split")
    plan = plan.get("folds") if isinstance(plan, dict) else None
    if not isinstance(plan, list):
        raise DataError(f"{split / PLAN_JSON}: not a fold plan (no 'folds' list); re-run the split stage (dvc repro)")
    return plan


def _read_fold(split: Path, entry: dict) -> FoldData:
    try:
        fold = Fold.from_describe(entry)
        assets = {}
        for symbol in entry["assets"]:
            folder = split / fold.name / symbol
            assets[symbol] = AssetFold(**{n: t.load(folder / f"{stem}.npz") for n, (stem, t) in RECORDS.items()})
        return FoldData(fold, assets, dict(entry["excluded"]))
    except (KeyError, TypeError) as exc:
        raise DataError(
            f"{split / PLAN_JSON}: not a fold plan ({exc!r}); re-run the split stage (dvc repro split)"
        ) from None


def study_digest(folds: list[FoldData]) -> str:
    """sha256 (16 hex) of every fold's every asset's arrays: the data a study ran on, for its run's provenance."""
    return hashlib.sha256("".join(a.digest for d in folds for a in d.assets.values()).encode()).hexdigest()[:16]


def newest_cut(split: Path, symbol: str) -> Path:
    """The folder of ``symbol``'s cut in the newest fold (its ``train.npz``, ``val.npz``): what a hyper-parameter
    search trains and scores on, never a test window."""
    holding = [f["name"] for f in _plan(split) if symbol in f.get("assets", [])]
    if not holding:
        raise DataError(f"{split / PLAN_JSON}: no fold holds {symbol}; re-run the split stage (dvc repro split)")
    return split / holding[-1] / symbol
