"""Data sources: each turns one origin into canonical bars and funding (``diffquant.data.contracts``) plus meta.

``load_source`` is the one entry point the download stage uses; the per-source loaders are public for tests and
notebooks. Every source converts its stamps to bar open times, so ``meta["stamp"]`` is always ``open_time``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from diffquant.config import DataConfig
from diffquant.data.sources._common import RawData, close_to_open
from diffquant.data.sources.binance import load_binance
from diffquant.data.sources.bundled import BUNDLED_DIR, load_bundled
from diffquant.data.sources.file import load_file
from diffquant.data.sources.huggingface import load_huggingface

__all__ = [
    "RawData",
    "close_to_open",
    "load_binance",
    "load_bundled",
    "load_file",
    "load_huggingface",
    "load_source",
]


def load_source(cfg: DataConfig, root: Path) -> RawData:
    """Load ``cfg.source``; relative paths (data files, the bundled folder, the Hub cache) start at ``root``."""
    root = Path(root).resolve()
    if cfg.source == "bundled":
        raw = load_bundled(root / BUNDLED_DIR, cfg.symbol)
    elif cfg.source == "huggingface":
        raw = load_huggingface(cfg.huggingface, cfg.symbol, root)
    elif cfg.source == "binance":
        raw = load_binance(cfg.binance, cfg.symbol)
    else:
        raw = load_file(cfg, root)
    return replace(raw, meta={**raw.meta, "inputs": _relative_keys(raw.meta["inputs"], root)})


def _relative_keys(inputs: dict[str, str], root: Path) -> dict[str, str]:
    """Files under ``root`` are recorded relative to it, so meta.json is the same in every clone."""
    return {(str(Path(k).relative_to(root)) if Path(k).is_relative_to(root) else k): v for k, v in inputs.items()}
