"""The user's own bars: a CSV or parquet file with the canonical columns, plus an optional funding file.

The stamps are declared, never inferred: ``data.stamp`` says whether the ``open_time`` column holds each bar's open
or its close, and ``data.source_minutes`` the bar length. Without ``data.funding_path`` the funding table is empty
and meta says ``funding_available: false``, so later stages can refuse ``sim.funding``. A universe of several
symbols reads one file per symbol: ``{symbol}`` in ``data.path`` (and ``data.funding_path``) is replaced by each.
"""

from __future__ import annotations

from pathlib import Path

from diffquant.config import DataConfig
from diffquant.data.contracts import validate_bars, validate_funding
from diffquant.data.sources._common import (
    RawData,
    apply_stamp,
    check_resolution,
    empty_funding,
    make_meta,
    read_table,
)
from diffquant.errors import ConfigError
from diffquant.io import sha256

PLACEHOLDER = "{symbol}"


def load_file(cfg: DataConfig, root: Path, symbol: str) -> RawData:
    """Load ``symbol``'s ``cfg.path`` (and ``cfg.funding_path``); relative paths start at ``root``."""
    if not cfg.path:
        raise ConfigError("data.source is 'file' but data.path is empty: set data.path to a CSV or parquet file")
    path = root / _per_symbol(cfg.path, "data.path", symbol, cfg.universe)
    funding_path = None
    if cfg.funding_path is not None:  # resolved before any read: a bad template fails before the bars are parsed
        funding_path = root / _per_symbol(cfg.funding_path, "data.funding_path", symbol, cfg.universe)
    where = str(path)
    bars = validate_bars(read_table(path), where)
    bars = apply_stamp(bars, cfg.stamp, cfg.source_minutes, where)
    check_resolution(bars, cfg.source_minutes, where, "data.source_minutes")
    inputs = {where: sha256(path)}
    if funding_path is None:
        funding = empty_funding()
    else:
        funding = validate_funding(read_table(funding_path), str(funding_path))
        inputs[str(funding_path)] = sha256(funding_path)
    meta = make_meta("file", symbol, cfg.source_minutes, inputs, funding=funding_path is not None)
    return RawData(bars, funding, meta)


def _per_symbol(template: str, key: str, symbol: str, universe: list[str]) -> Path:
    """``template`` with ``{symbol}`` filled in; several symbols without it would all read one file."""
    if len(universe) > 1 and PLACEHOLDER not in template:
        raise ConfigError(
            f"{key} is {template!r}, but data.symbols lists {len(universe)} symbols: put {PLACEHOLDER} in the path "
            f"where each file's symbol goes (e.g. bars_{PLACEHOLDER}.csv)"
        )
    return Path(template.replace(PLACEHOLDER, symbol)).expanduser()
