"""What every source shares: the result type, reading a table file, stamp conversion and the resolution check."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffquant.data.contracts import MINUTE_MS, from_ms, to_ms, validate_funding
from diffquant.errors import DataError
from diffquant.io import verify_sha256


@dataclass(frozen=True)
class RawData:
    """Canonical bars and funding at the source resolution, and ``meta`` (written as ``meta.json``).

    Optional, for the feature families that read them (``diffquant.data.families``): ``mark``, mark-price bars at
    ``meta["mark_minutes"]`` (the bar contract; volume 0); ``columns``, the user's own numeric columns on the bars'
    stamps (``open_time`` first).
    """

    bars: pd.DataFrame
    funding: pd.DataFrame
    meta: dict[str, Any]
    mark: pd.DataFrame | None = None
    columns: pd.DataFrame | None = None


def make_meta(source: str, symbol: str, minutes: int, inputs: dict[str, str], funding: bool) -> dict[str, Any]:
    """``stamp`` is always ``open_time``: every source converts before returning."""
    return {
        "source": source,
        "symbol": symbol,
        "source_minutes": minutes,
        "stamp": "open_time",
        "inputs": inputs,
        "funding_available": funding,
    }


def empty_funding() -> pd.DataFrame:
    """The funding table of a source without funding data (``funding_available: false`` in meta)."""
    empty = pd.DataFrame({"funding_time": np.array([], dtype=np.int64), "funding_rate": np.array([], dtype=float)})
    return validate_funding(empty, "empty funding table")


def require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found; {what}")


def checked_sha256(path: Path, expected: str) -> str:
    """Verify a shipped file before every load: a corrupt copy must stop the pipeline, not feed it."""
    require_file(path, "restore the shipped data (git checkout data_source/bundled)")
    verify_sha256(path, expected)
    return expected


def read_table(path: Path) -> pd.DataFrame:
    """``*.parquet`` or CSV (compression inferred from the name, e.g. ``.csv.gz``); unreadable -> ``DataError``."""
    require_file(path, "check the path in params.yaml (relative paths start at the repository root)")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (EOFError, OSError, ValueError, zlib.error) as exc:
        # EOFError: truncated gzip; BadGzipFile is an OSError; pandas' parser errors and pyarrow's are ValueErrors.
        raise DataError(
            f"{path}: cannot be read ({type(exc).__name__}: {exc}); the file is truncated or corrupt, "
            "restore or re-download it"
        ) from None


def close_to_open(close_ms: np.ndarray, minutes: int) -> np.ndarray:
    """Open time of bars stamped at their close: the stamp rounded UP to a whole minute, minus the bar length.

    Rounding up maps both exact close stamps (00:05:00.000 closes the 00:00 5-minute bar) and Binance-style
    last-millisecond stamps (00:04:59.999) to the same open time.
    """
    return -(-close_ms // MINUTE_MS) * MINUTE_MS - minutes * MINUTE_MS


def apply_stamp(bars: pd.DataFrame, stamp: str, minutes: int, where: str) -> pd.DataFrame:
    """Turn validated bars stamped by ``stamp`` into open-time bars; two stamps that land on one open are refused."""
    if stamp == "open_time":
        return bars
    opens = close_to_open(to_ms(bars["open_time"]), minutes)
    collide = np.flatnonzero(np.diff(opens) == 0)
    if collide.size:
        i = int(collide[0])
        raise DataError(
            f"{where}: rows {i} and {i + 1} give the same open time after converting close_time stamps "
            f"({collide.size} such pair(s)); check the stamp convention and the bar length ({minutes} min)"
        )
    out = bars.copy()
    out["open_time"] = from_ms(opens)
    return out


def check_resolution(bars: pd.DataFrame, minutes: int, where: str, key: str) -> None:
    """Bars closer together than the declared resolution mean the declaration is wrong: refuse, never guess."""
    step = np.diff(to_ms(bars["open_time"]))
    short = np.flatnonzero(step < minutes * MINUTE_MS)
    if short.size:
        i = int(short[0])
        raise DataError(
            f"{where}: rows {i} and {i + 1} are {step[i] / MINUTE_MS:g} min apart, less than the declared "
            f"{minutes} min ({key}); set {key} to the bar length of the data"
        )
