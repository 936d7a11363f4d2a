"""What the feature families read, from the sources to the timeframe, through the data stages' folders, and as the
served model's input table.

``needs`` says, from ``features:``, what to load besides an asset's bars and funding (its mark-price bars, the user's
columns, the market's assets). The data stages keep one folder per asset: download ``raw/<SYMBOL>/`` (the source's
bars, funding, meta, and ``mark``, ``columns`` when read) and ``raw/market/<SYMBOL>/`` (the market's assets);
aggregate ``bars/<SYMBOL>/`` (the tables at the timeframe) and ``bars/market/<SYMBOL>.parquet``; features reads them
back through :func:`stage_inputs`. A reader takes what is there, so a family that is off leaves no file behind. The
model-input table is the asset's bars at the timeframe plus each family's ``model_columns`` (the MLflow input
schema): :func:`model_table` writes it from the pipeline's inputs, :func:`inputs_from_table` reads it back into the
same ``FeatureInputs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from diffquant.config import Config, FeatureConfig, UserColumn
from diffquant.data.aggregate import AggregateStats, aggregate, aggregate_columns
from diffquant.data.contracts import (
    BAR_COLUMNS,
    MINUTE_MS,
    OPTIONAL_BAR_COLUMNS,
    to_ms,
    validate_bars,
    validate_funding,
)
from diffquant.data.families import FAMILIES, FeatureInputs, market_symbols
from diffquant.data.features import settlements_per_bar
from diffquant.data.sources import RawData, load_source
from diffquant.errors import DataError
from diffquant.io import read_json, read_parquet, write_json, write_parquet

MARKET_DIR = "market"


@dataclass(frozen=True)
class Needs:
    """What ``features:`` reads beyond each asset's bars and funding."""

    mark: bool
    columns: tuple[UserColumn, ...]
    market: tuple[str, ...]  # the market's members and its reference


def needs(features: FeatureConfig) -> Needs:
    return Needs(bool(features.premium.channels), tuple(features.columns), tuple(market_symbols(features)))


def load_assets(cfg: Config, root: Path, symbols: list[str]) -> tuple[dict[str, RawData], dict[str, RawData]]:
    """``symbols`` with what their features need, and the market's assets (those among ``symbols`` reused)."""
    want = needs(cfg.features)
    assets = {s: load_source(cfg.data, root, s, mark=want.mark, columns=want.columns) for s in symbols}
    market = {s: assets[s] if s in assets else load_source(cfg.data, root, s) for s in want.market}
    return assets, market


@dataclass(frozen=True)
class Tables:
    """An asset's tables at the timeframe: bars, and its mark bars and user columns when loaded."""

    bars: pd.DataFrame
    mark: pd.DataFrame | None = None
    columns: pd.DataFrame | None = None


def at_timeframe(raw: RawData, features: FeatureConfig, timeframe_minutes: int) -> tuple[Tables, AggregateStats]:
    """``raw``'s bars, mark bars and user columns aggregated to the timeframe (complete buckets only), and what the
    bars' aggregation kept and dropped."""
    bars, stats = aggregate(raw.bars, raw.meta["source_minutes"], timeframe_minutes)
    return with_extras(bars, raw, features, timeframe_minutes), stats


def with_extras(bars: pd.DataFrame, raw: RawData, features: FeatureConfig, timeframe_minutes: int) -> Tables:
    """``bars`` (``raw``'s, aggregated) with ``raw``'s mark bars and user columns aggregated beside them."""
    mark = None if raw.mark is None else aggregate(raw.mark, raw.meta["mark_minutes"], timeframe_minutes)[0]
    columns = None
    if raw.columns is not None:
        how = {c.name: c.aggregate for c in features.columns}
        columns = aggregate_columns(raw.columns, how, raw.meta["source_minutes"], timeframe_minutes)
    return Tables(bars, mark, columns)


def market_bars(market: dict[str, RawData], timeframe_minutes: int) -> dict[str, pd.DataFrame] | None:
    """The market's assets' bars at the timeframe (None when the market family is off)."""
    if not market:
        return None
    return {s: aggregate(raw.bars, raw.meta["source_minutes"], timeframe_minutes)[0] for s, raw in market.items()}


def write_raw(folder: Path, raw: RawData) -> None:
    """An asset's source tables as the download stage keeps them: bars, funding, meta (+ mark, columns)."""
    write_parquet(raw.bars, folder / "bars.parquet")
    write_parquet(raw.funding, folder / "funding.parquet")
    write_json(folder / "meta.json", raw.meta)
    for name in ("mark", "columns"):
        table = getattr(raw, name)
        if table is not None:
            write_parquet(table, folder / f"{name}.parquet")


def read_raw(folder: Path, produced_by: str) -> RawData:
    """What :func:`write_raw` wrote, checked again (bars, mark bars: the bar contract; funding; meta)."""
    meta = read_json(folder / "meta.json", produced_by)
    if not isinstance(meta.get("source_minutes"), int):
        raise DataError(f"{folder / 'meta.json'}: no integer source_minutes; re-run the {produced_by} stage")
    bars = validate_bars(read_parquet(folder / "bars.parquet", produced_by), str(folder / "bars.parquet"))
    funding = read_funding(folder / "funding.parquet", produced_by)
    mark = columns = None
    if (folder / "mark.parquet").is_file():
        mark = validate_bars(read_parquet(folder / "mark.parquet", produced_by), str(folder / "mark.parquet"))
    if (folder / "columns.parquet").is_file():
        columns = read_parquet(folder / "columns.parquet", produced_by)
    return RawData(bars, funding, meta, mark, columns)


def write_raw_market(folder: Path, market: dict[str, RawData]) -> None:
    for symbol, raw in market.items():
        write_raw(folder / MARKET_DIR / symbol, raw)


def read_raw_market(folder: Path, features: FeatureConfig, produced_by: str) -> dict[str, RawData]:
    """The market's assets as the download stage wrote them under ``folder/market`` (empty when the family is off)."""
    return {s: read_raw(folder / MARKET_DIR / s, produced_by) for s in market_symbols(features)}


def feature_inputs(
    tables: Tables,
    funding: pd.DataFrame,
    timeframe_minutes: int,
    market: dict[str, pd.DataFrame] | None = None,
    symbol: str = "the asset",
) -> FeatureInputs:
    """The families' inputs of one asset: its tables, its funding settled per bar, the market's bars."""
    rate, count = settlements_per_bar(to_ms(tables.bars["open_time"]), funding, timeframe_minutes * MINUTE_MS)
    return FeatureInputs(tables.bars, rate, count, tables.mark, tables.columns, market, symbol)


def write_tables(folder: Path, tables: Tables) -> None:
    write_parquet(tables.bars, folder / "bars.parquet")
    for name in ("mark", "columns"):
        table = getattr(tables, name)
        if table is not None:
            write_parquet(table, folder / f"{name}.parquet")


def read_tables(folder: Path, produced_by: str) -> Tables:
    """An asset folder's tables (``bars`` checked as bars, ``mark`` as bars too); absent optional ones are None."""
    bars = validate_bars(read_parquet(folder / "bars.parquet", produced_by), str(folder / "bars.parquet"))
    mark = columns = None
    if (folder / "mark.parquet").is_file():
        mark = validate_bars(read_parquet(folder / "mark.parquet", produced_by), str(folder / "mark.parquet"))
    if (folder / "columns.parquet").is_file():
        columns = read_parquet(folder / "columns.parquet", produced_by)
    return Tables(bars, mark, columns)


def write_market(folder: Path, market: dict[str, pd.DataFrame]) -> None:
    for symbol, bars in market.items():
        write_parquet(bars, folder / MARKET_DIR / f"{symbol}.parquet")


def read_market(folder: Path, features: FeatureConfig, produced_by: str) -> dict[str, pd.DataFrame] | None:
    """The market's bars at the timeframe that a stage wrote under ``folder/market`` (None when the family is off)."""
    symbols = market_symbols(features)
    if not symbols:
        return None
    paths = {s: folder / MARKET_DIR / f"{s}.parquet" for s in symbols}
    return {s: validate_bars(read_parquet(p, produced_by), str(p)) for s, p in paths.items()}


def read_funding(path: Path, produced_by: str) -> pd.DataFrame:
    return validate_funding(read_parquet(path, produced_by), str(path))


def model_table(inputs: FeatureInputs, features: FeatureConfig) -> pd.DataFrame:
    """The served model's input table of ``inputs``: the bars (``open_time`` in Unix ms) and every family's model
    columns, row for row."""
    bars = inputs.bars
    out = bars[[c for c in (*BAR_COLUMNS, *OPTIONAL_BAR_COLUMNS) if c in bars.columns]].copy()
    out["open_time"] = to_ms(bars["open_time"])
    for family in FAMILIES:
        for name, values in family.to_model_columns(inputs, features).items():
            out[name] = values
    return out.reset_index(drop=True)


def model_columns(features: FeatureConfig) -> list[str]:
    """Every column the families add to the model-input table (its schema beyond the bars)."""
    return [c for family in FAMILIES for c in family.model_columns(features)]


def inputs_from_table(table: pd.DataFrame, bars: pd.DataFrame, features: FeatureConfig, where: str) -> FeatureInputs:
    """``FeatureInputs`` from a model-input ``table`` whose bar columns are already checked as ``bars`` (the same
    rows): the families read their columns, each refusing a missing or bad one by name."""
    table = table.reset_index(drop=True).assign(open_time=bars["open_time"].to_numpy())
    fields: dict[str, object] = {"funding_rate": np.zeros(len(bars)), "settlements": np.zeros(len(bars), np.int64)}
    for family in FAMILIES:
        fields.update(family.from_model_columns(table, features, where))
    return FeatureInputs(bars.reset_index(drop=True), **fields)


def stage_inputs(bars_dir: Path, raw_dir: Path, symbol: str, cfg: Config) -> FeatureInputs:
    """An asset's inputs as the data stages wrote them: its tables at the timeframe (the aggregate stage's
    ``<bars_dir>/<SYMBOL>/``), its funding (the download stage's ``<raw_dir>/<SYMBOL>/funding.parquet``) and the
    market's bars (``<bars_dir>/market/``)."""
    tables = read_tables(bars_dir / symbol, "aggregate")
    funding = read_funding(raw_dir / symbol / "funding.parquet", "download")
    market = read_market(bars_dir, cfg.features, "aggregate")
    return feature_inputs(tables, funding, cfg.data.timeframe_minutes, market, symbol)
