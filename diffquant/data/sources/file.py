"""The user's own bars: a CSV or parquet file with the canonical columns, plus optional funding and mark-price files.

The stamps are declared, never inferred: ``data.stamp`` says whether the ``open_time`` column holds each bar's open
or its close, and ``data.source_minutes`` the bar length. Without ``data.funding_path`` the funding table is empty
and meta says ``funding_available: false``, so later stages can refuse ``sim.funding``. A universe of several
symbols reads one file per symbol: ``{symbol}`` in ``data.path`` (and the other paths) is replaced by each.

The bars file may carry the user's own numeric columns (open interest, order flow, sentiment, ...): those that
``features.columns`` declares are read into ``RawData.columns`` (checked: present, numeric, finite); any other extra
column is refused, as before. ``data.mark_path`` holds mark-price bars with the bars' columns, stamps and length.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from diffquant.config import DataConfig, UserColumn
from diffquant.data.contracts import (
    BAR_COLUMNS,
    OPTIONAL_BAR_COLUMNS,
    validate_bars,
    validate_funding,
    validate_user_columns,
)
from diffquant.data.sources._common import (
    RawData,
    apply_stamp,
    check_resolution,
    empty_funding,
    make_meta,
    read_table,
)
from diffquant.errors import ConfigError, DataError
from diffquant.io import sha256

PLACEHOLDER = "{symbol}"


def load_file(
    cfg: DataConfig, root: Path, symbol: str, columns: tuple[UserColumn, ...] = (), mark: bool = False
) -> RawData:
    """Load ``symbol``'s ``cfg.path`` (with the declared user ``columns``), ``cfg.funding_path`` and, when ``mark``
    and ``cfg.mark_path`` is set, its mark-price bars; relative paths start at ``root``."""
    if not cfg.path:
        raise ConfigError("data.source is 'file' but data.path is empty: set data.path to a CSV or parquet file")
    path = root / _per_symbol(cfg.path, "data.path", symbol, cfg.universe)
    funding_path = mark_path = None
    if cfg.funding_path is not None:  # resolved before any read: a bad template fails before the bars are parsed
        funding_path = root / _per_symbol(cfg.funding_path, "data.funding_path", symbol, cfg.universe)
    if mark and cfg.mark_path is not None:
        mark_path = root / _per_symbol(cfg.mark_path, "data.mark_path", symbol, cfg.universe)
    where = str(path)
    table = read_table(path)
    names = [c.name for c in columns]
    positive = tuple(c.name for c in columns if c.transform == "log_diff")
    user = validate_user_columns(table, names, where, positive) if names else None
    extra = [c for c in table.columns if c not in (*BAR_COLUMNS, *OPTIONAL_BAR_COLUMNS, *names)]
    if extra:
        raise DataError(
            f"{where}: unexpected column(s) {extra}; declare those the policy should see in features.columns "
            "(docs/features.md) and drop the others"
        )
    bars = _bars(table.drop(columns=names), cfg, where)
    inputs = {where: sha256(path)}
    if funding_path is None:
        funding = empty_funding()
    else:
        funding = validate_funding(read_table(funding_path), str(funding_path))
        inputs[str(funding_path)] = sha256(funding_path)
    meta = make_meta("file", symbol, cfg.source_minutes, inputs, funding=funding_path is not None)
    mark_bars = None
    if mark_path is not None:
        mark_bars = _bars(read_table(mark_path), cfg, str(mark_path))
        inputs[str(mark_path)] = sha256(mark_path)
        meta["mark_minutes"] = cfg.source_minutes
    if user is not None:
        user.insert(0, "open_time", bars["open_time"].to_numpy())  # the bars' stamps, converted to open times
    return RawData(bars, funding, meta, mark=mark_bars, columns=user)


def _bars(table: pd.DataFrame, cfg: DataConfig, where: str) -> pd.DataFrame:
    """A table of the bar columns -> canonical open-time bars at ``data.source_minutes``."""
    bars = apply_stamp(validate_bars(table, where), cfg.stamp, cfg.source_minutes, where)
    check_resolution(bars, cfg.source_minutes, where, "data.source_minutes")
    return bars


def _per_symbol(template: str, key: str, symbol: str, universe: list[str]) -> Path:
    """``template`` with ``{symbol}`` filled in; several symbols without it would all read one file."""
    if len(universe) > 1 and PLACEHOLDER not in template:
        raise ConfigError(
            f"{key} is {template!r}, but data.symbols lists {len(universe)} symbols: put {PLACEHOLDER} in the path "
            f"where each file's symbol goes (e.g. bars_{PLACEHOLDER}.csv)"
        )
    return Path(template.replace(PLACEHOLDER, symbol)).expanduser()
