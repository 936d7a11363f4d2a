"""The canonical tables every source produces (DESIGN section 4) and their checks.

Bars: ``open_time`` (datetime64[ms, UTC], the bar's open), ``open``, ``high``, ``low``, ``close``, ``volume``
(float64), optional ``num_trades``; strictly increasing stamps, prices > 0, everything finite.
Funding: ``funding_time`` (datetime64[ms, UTC]), ``funding_rate`` (fraction per event; longs pay when > 0).

Refused (``DataError`` naming the file and the first offending rows): missing or extra columns, unparsable values,
NaN/inf, non-positive prices, duplicated or unsorted stamps. Gaps and zero-volume runs are legal and only reported
(see ``quality``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from diffquant.errors import DataError

PRICE_COLUMNS = ("open", "high", "low", "close")
BAR_COLUMNS = ("open_time", *PRICE_COLUMNS, "volume")
OPTIONAL_BAR_COLUMNS = ("num_trades",)
FUNDING_COLUMNS = ("funding_time", "funding_rate")
TIME_DTYPE = "datetime64[ms, UTC]"
MINUTE_MS = 60_000


def _rows(mask: np.ndarray, limit: int = 5) -> str:
    idx = np.flatnonzero(mask)
    shown = ", ".join(str(i) for i in idx[:limit])
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f"row(s) {shown}{more}"


def check_columns(df: pd.DataFrame, required: tuple[str, ...], optional: tuple[str, ...], where: str) -> None:
    missing = [c for c in required if c not in df.columns]
    extra = [c for c in df.columns if c not in required and c not in optional]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {missing}")
        if extra:
            parts.append(f"unexpected column(s) {extra}")
        allowed = list(required) + [f"{c} (optional)" for c in optional]
        raise DataError(f"{where}: {'; '.join(parts)}. Expected columns: {', '.join(allowed)}")


def to_ms(stamps: pd.Series) -> np.ndarray:
    """UTC timestamps -> int64 Unix ms via datetime64[ms]; never ``// 10**6`` (pandas 3 may hold µs)."""
    return pd.DatetimeIndex(stamps).as_unit("ms").asi8.copy()


def from_ms(ms: np.ndarray) -> pd.Series:
    """int64 Unix ms -> the canonical ``datetime64[ms, UTC]`` column."""
    return pd.Series(pd.to_datetime(np.asarray(ms, dtype=np.int64), unit="ms", utc=True)).astype(TIME_DTYPE)


def _check_stamps(stamps: pd.Series, name: str, where: str) -> None:
    if stamps.isna().any():
        raise DataError(f"{where}: {name} is missing at {_rows(stamps.isna().to_numpy())}")
    ms = to_ms(stamps)
    diff = np.diff(ms)
    if (diff == 0).any():
        raise DataError(
            f"{where}: duplicated {name} at {_rows(np.r_[False, diff == 0])}; keep one row per stamp and re-run"
        )
    if (diff < 0).any():
        raise DataError(f"{where}: {name} not increasing at {_rows(np.r_[False, diff < 0])}; sort the file by {name}")


def _as_utc_ms(values: pd.Series, name: str, where: str) -> pd.Series:
    """Integer Unix-ms or datetime-like values -> datetime64[ms, UTC]; refuses what does not parse."""
    try:
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            out = pd.to_datetime(values, unit="ms", utc=True)
        else:
            out = pd.to_datetime(values, utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError) as exc:
        raise DataError(f"{where}: column {name} has unparsable stamps ({exc}); use Unix ms or ISO-8601 UTC") from None
    return out.astype(TIME_DTYPE)


def _as_float(df: pd.DataFrame, col: str, where: str) -> np.ndarray:
    values = pd.to_numeric(df[col], errors="coerce")
    bad = values.isna() & df[col].notna()
    if bad.any():
        raise DataError(f"{where}: column {col} has unparsable values at {_rows(bad.to_numpy())}")
    return values.to_numpy(dtype=np.float64)


def validate_bars(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Return ``df`` as canonical bars or raise ``DataError``; ``where`` names the file in every message."""
    check_columns(df, BAR_COLUMNS, OPTIONAL_BAR_COLUMNS, where)
    out = pd.DataFrame({"open_time": _as_utc_ms(df["open_time"], "open_time", where)})
    for col in (*PRICE_COLUMNS, "volume", *[c for c in OPTIONAL_BAR_COLUMNS if c in df.columns]):
        values = _as_float(df, col, where)
        bad = ~np.isfinite(values)
        if bad.any():
            raise DataError(f"{where}: column {col} is NaN or infinite at {_rows(bad)}; repair or drop those rows")
        if col in PRICE_COLUMNS and (values <= 0).any():
            raise DataError(f"{where}: column {col} is zero or negative at {_rows(values <= 0)}; prices must be > 0")
        if col not in PRICE_COLUMNS and (values < 0).any():
            raise DataError(f"{where}: column {col} is negative at {_rows(values < 0)}")
        out[col] = values
    _check_stamps(out["open_time"], "open_time", where)
    return out.reset_index(drop=True)


def validate_funding(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Return ``df`` as the canonical funding table or raise ``DataError``."""
    check_columns(df, FUNDING_COLUMNS, (), where)
    out = pd.DataFrame({"funding_time": _as_utc_ms(df["funding_time"], "funding_time", where)})
    rate = _as_float(df, "funding_rate", where)
    bad = ~np.isfinite(rate)
    if bad.any():
        raise DataError(f"{where}: funding_rate is NaN or infinite at {_rows(bad)}")
    out["funding_rate"] = rate
    _check_stamps(out["funding_time"], "funding_time", where)
    return out.reset_index(drop=True)


def validate_user_columns(
    df: pd.DataFrame, names: list[str], where: str, positive: tuple[str, ...] = ()
) -> pd.DataFrame:
    """The user's own columns ``names`` of ``df`` as float64 columns, or a ``DataError`` naming the file, the column
    and the first offending rows: missing, not a number, NaN or infinite, or (for ``positive`` ones) zero or
    negative."""
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise DataError(
            f"{where}: features.columns declares column(s) {missing}, which the file does not have; "
            f"its columns are {list(df.columns)}"
        )
    out = pd.DataFrame(index=range(len(df)))
    for col in names:
        values = pd.to_numeric(df[col], errors="coerce")
        text = values.isna() & df[col].notna()
        if text.any():
            first = df[col][text].iloc[0]
            raise DataError(
                f"{where}: column {col} is not a number at {_rows(text.to_numpy())} (e.g. {first!r}); "
                "features.columns must be numeric"
            )
        values = values.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise DataError(f"{where}: column {col} is NaN or infinite at {_rows(bad)}; repair or drop those rows")
        if col in positive and (values <= 0).any():
            raise DataError(
                f"{where}: column {col} is zero or negative at {_rows(values <= 0)}; its transform log_diff needs "
                "values > 0 (use raw or zscore)"
            )
        out[col] = values
    return out
