"""The user's own bars: a CSV or parquet file with the canonical columns, plus an optional funding file.

The stamps are declared, never inferred: ``data.stamp`` says whether the ``open_time`` column holds each bar's open
or its close, and ``data.source_minutes`` the bar length. Without ``data.funding_path`` the funding table is empty
and meta says ``funding_available: false``, so later stages can refuse ``sim.funding``.
"""

from __future__ import annotations

from pathlib import Path

from diffquant.config import DataConfig
from diffquant.data.contracts import sha256, validate_bars, validate_funding
from diffquant.data.sources._common import (
    RawData,
    apply_stamp,
    check_resolution,
    empty_funding,
    make_meta,
    read_table,
)
from diffquant.errors import ConfigError


def load_file(cfg: DataConfig, root: Path) -> RawData:
    """Load ``cfg.path`` (and ``cfg.funding_path``); relative paths start at ``root``."""
    if not cfg.path:
        raise ConfigError("data.source is 'file' but data.path is empty: set data.path to a CSV or parquet file")
    path = root / Path(cfg.path).expanduser()
    where = str(path)
    bars = validate_bars(read_table(path), where)
    bars = apply_stamp(bars, cfg.stamp, cfg.source_minutes, where)
    check_resolution(bars, cfg.source_minutes, where, "data.source_minutes")
    inputs = {where: sha256(path)}
    if cfg.funding_path is None:
        funding = empty_funding()
    else:
        funding_path = root / Path(cfg.funding_path).expanduser()
        funding = validate_funding(read_table(funding_path), str(funding_path))
        inputs[str(funding_path)] = sha256(funding_path)
    meta = make_meta("file", cfg.symbol, cfg.source_minutes, inputs, funding=cfg.funding_path is not None)
    return RawData(bars, funding, meta)
