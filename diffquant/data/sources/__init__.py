"""Data sources: each turns one origin into canonical bars and funding (``diffquant.data.contracts``) plus meta.

``load_source`` (one asset) and ``load_universe`` (every asset of ``data.symbols``) are the entry points the stages
use; the per-source loaders are public for tests and notebooks. Every source converts its stamps to bar open times,
so ``meta["stamp"]`` is always ``open_time``, and ``data.start`` is applied here, once, to whatever a source returns.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from diffquant.config import DataConfig, UserColumn, parse_date
from diffquant.data.sources._common import RawData, close_to_open
from diffquant.data.sources.binance import load_binance
from diffquant.data.sources.bundled import BUNDLED_DIR, load_bundled
from diffquant.data.sources.file import load_file
from diffquant.data.sources.huggingface import load_huggingface
from diffquant.errors import ConfigError, DataError

__all__ = [
    "RawData",
    "apply_start",
    "close_to_open",
    "load_binance",
    "load_bundled",
    "load_file",
    "load_huggingface",
    "load_source",
    "load_universe",
]


def load_source(
    cfg: DataConfig,
    root: Path,
    symbol: str | None = None,
    *,
    mark: bool = False,
    columns: tuple[UserColumn, ...] = (),
) -> RawData:
    """Load ``symbol`` (default ``cfg.symbol``) from ``cfg.source``; relative paths start at ``root``. ``mark``: its
    mark-price bars too, where the source has them (bundled, file); ``columns``: the user's columns (file)."""
    root = Path(root).resolve()
    symbol = cfg.symbol if symbol is None else symbol
    if cfg.source == "bundled":
        raw = load_bundled(root / BUNDLED_DIR, symbol, cfg.timeframe_minutes, mark)
    elif cfg.source == "huggingface":
        if len(cfg.universe) > 1:
            raise ConfigError(
                f"data.symbols lists {len(cfg.universe)} symbols, but the Hugging Face dataset holds one asset; "
                "list one symbol, or use data.source: bundled, binance or file for a universe"
            )
        raw = load_huggingface(cfg.huggingface, symbol, root)
    elif cfg.source == "binance":
        raw = load_binance(cfg.binance, symbol)
    else:
        raw = load_file(cfg, root, symbol, columns, mark)
    raw = apply_start(raw, cfg.start)
    return replace(raw, meta={**raw.meta, "inputs": _relative_keys(raw.meta["inputs"], root)})


def load_universe(
    cfg: DataConfig, root: Path, *, mark: bool = False, columns: tuple[UserColumn, ...] = ()
) -> dict[str, RawData]:
    """Every asset of ``cfg.universe``, in its order (``data.symbols``, or ``[data.symbol]``)."""
    return {symbol: load_source(cfg, root, symbol, mark=mark, columns=columns) for symbol in cfg.universe}


def apply_start(raw: RawData, start: str | None) -> RawData:
    """Drop bars and funding before ``start`` (a UTC date; None keeps all); meta records it either way."""
    meta = {**raw.meta, "start": start}
    if start is None:
        return replace(raw, meta=meta)
    first = parse_date(start, "data.start")
    bars = raw.bars[raw.bars["open_time"] >= first].reset_index(drop=True)
    if bars.empty:
        span = f"{raw.bars['open_time'].iloc[0]} .. {raw.bars['open_time'].iloc[-1]}" if len(raw.bars) else "no bars"
        raise DataError(
            f"data.start is {start}, but the {raw.meta['source']} {raw.meta['symbol']} data spans {span}: "
            "nothing is left; set data.start inside that span (or null)"
        )
    funding = raw.funding[raw.funding["funding_time"] >= first].reset_index(drop=True)
    mark = None if raw.mark is None else raw.mark[raw.mark["open_time"] >= first].reset_index(drop=True)
    columns = None if raw.columns is None else raw.columns[raw.columns["open_time"] >= first].reset_index(drop=True)
    return RawData(bars, funding, meta, mark, columns)


def _relative_keys(inputs: dict[str, str], root: Path) -> dict[str, str]:
    """Files under ``root`` are recorded relative to it, so meta.json is the same in every clone."""
    return {(str(Path(k).relative_to(root)) if Path(k).is_relative_to(root) else k): v for k, v in inputs.items()}
