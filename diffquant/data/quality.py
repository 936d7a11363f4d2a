"""Data-quality report: what a bar table holds that the contract allows but a reader of the results must know.

Gaps and zero-volume runs are legal (DESIGN section 4): they are reported here, never filled or dropped. Exchanges
fill a halt with zero-volume bars at the last price, so the real move shows up as a jump when trading resumes,
usually between the previous close and the next bar's *open* (on a liquid market the open equals the previous close
to a tick). The report therefore lists, with a robust z-score, the move across every gap, the move out of every
zero-volume run, the largest close-to-close moves and the largest open gaps.

The contract's breaches (duplicated, unsorted, NaN, non-positive) are counted on the raw frame as well, so the report
can describe a file before ``contracts.validate_bars`` refuses it; the analysis then uses the rows that would pass.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd

from diffquant.data.contracts import MINUTE_MS, PRICE_COLUMNS

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# For zero-mean normal returns, median |r| = 0.6745 sigma: this turns the median absolute return into a sigma that
# one crash cannot inflate (the plain standard deviation can).
MAD_TO_SIGMA = 1.4826


def quality_report(
    bars: pd.DataFrame, source_minutes: int, *, jump_threshold: float = 0.01, top: int = 10, max_items: int = 1000
) -> dict[str, Any]:
    """Describe ``bars`` (canonical or raw, with the bar columns) at ``source_minutes`` resolution, as JSON-able dict.

    ``jump_threshold`` is the |log return| counted as large; ``top`` the length of the largest-move lists;
    ``max_items`` caps the gap and zero-volume lists (the longest are kept, the summary counts all).
    """
    stamps, valid_stamp = _stamps_ms(bars["open_time"])
    columns = (*PRICE_COLUMNS, "volume")
    values = np.column_stack([pd.to_numeric(bars[c], errors="coerce").to_numpy(float) for c in columns])
    integrity = _integrity(stamps, valid_stamp, values, source_minutes * MINUTE_MS)
    keep = _clean_rows(stamps, valid_stamp, values)
    s = _Series(stamps[keep], values[keep], source_minutes * MINUTE_MS)
    gaps = _gaps(s)
    runs = _zero_volume_runs(s)
    return {
        "source_minutes": source_minutes,
        "n_bars": len(bars),
        "first_open_time": _iso(s.t[0]) if s.n else None,
        "last_open_time": _iso(s.t[-1]) if s.n else None,
        "expected_bars": int((s.t[-1] - s.t[0]) // s.step + 1) if s.n else 0,
        "summary": {
            "gaps": len(gaps),
            "missing_bars": sum(g["missing_bars"] for g in gaps),
            "zero_volume_bars": int((s.volume == 0).sum()),
            "zero_volume_runs": len(runs),
            "large_moves": int((np.abs(s.log_return) > jump_threshold).sum()),
            **integrity,
        },
        "returns": {
            "median_abs_log_return": _round(s.median_abs),
            "robust_sigma": _round(s.sigma),
            "jump_threshold": jump_threshold,
        },
        "gaps": _longest(gaps, "missing_bars", max_items),
        "zero_volume_runs": _longest(runs, "bars", max_items),
        "largest_moves": [_jump(s, i, jump_threshold) for i in _top(np.abs(s.log_return), top)],
        "largest_open_gaps": [_jump(s, i, jump_threshold) for i in _top(np.abs(s.open_gap), top)],
    }


class _Series:
    """Sorted, unique, finite rows and the moves between them; move ``i`` goes from bar ``i`` to bar ``i + 1``."""

    def __init__(self, t: np.ndarray, values: np.ndarray, step: int) -> None:
        self.t, self.step, self.n = t, step, len(t)
        self.prices, self.volume = values[:, :4], values[:, 4]
        self.open, self.close = values[:, 0], values[:, 3]
        self.log_return = np.diff(np.log(self.close))
        self.open_gap = np.log(self.open[1:] / self.close[:-1])
        self.gap_before = np.diff(t, prepend=t[:1]) > step
        consecutive = np.abs(self.log_return[~self.gap_before[1:]])
        self.median_abs = float(np.median(consecutive)) if consecutive.size else 0.0
        self.sigma = MAD_TO_SIGMA * self.median_abs


def _stamps_ms(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Unix ms (int64) and a validity mask; numbers (or numeric text) are Unix ms, other text is ISO-8601."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.to_datetime(values, utc=True)
    else:
        numbers = pd.to_numeric(values, errors="coerce")
        parsed = pd.to_datetime(numbers, unit="ms", utc=True, errors="coerce")
        text = numbers.isna() & values.notna()
        if text.any():
            iso = pd.to_datetime(values[text].astype(str), utc=True, errors="coerce", format="ISO8601")
            parsed = parsed.where(~text, iso)
    as_ms = parsed.to_numpy(dtype="datetime64[ms]")
    return as_ms.astype(np.int64), ~np.isnat(as_ms)


def _integrity(t: np.ndarray, valid: np.ndarray, values: np.ndarray, step: int) -> dict[str, int]:
    """Counts of rows that break the contract (all zero for validated bars) and of stamps off the bar grid."""
    finite = np.isfinite(values).all(axis=1)
    good_t = t[valid]
    return {
        "missing_stamps": int((~valid).sum()),
        "duplicated_stamps": int(pd.Series(good_t).duplicated().sum()),
        "unsorted_stamps": int((np.diff(good_t) < 0).sum()),
        "non_finite_rows": int((~finite).sum()),
        "non_positive_price_rows": int((values[:, :4] <= 0).any(axis=1).sum()),
        "negative_volume_rows": int((values[:, 4] < 0).sum()),
        "off_grid_stamps": int((good_t % step != 0).sum()),
    }


def _clean_rows(t: np.ndarray, valid: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Indices of the rows the contract would accept, in stamp order, first of each duplicated stamp."""
    ok = valid & np.isfinite(values).all(axis=1) & (values[:, :4] > 0).all(axis=1) & (values[:, 4] >= 0)
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(t[idx], kind="stable")]
    return idx[np.r_[True, np.diff(t[idx]) != 0]] if idx.size else idx


def _gaps(s: _Series) -> list[dict[str, Any]]:
    out = []
    for i in np.flatnonzero(s.gap_before):
        out.append(
            {
                "after": _iso(s.t[i - 1]),
                "before": _iso(s.t[i]),
                "missing_bars": int((s.t[i] - s.t[i - 1]) // s.step - 1),
                "jump": _move(s, i - 1),
            }
        )
    return out


def _zero_volume_runs(s: _Series) -> list[dict[str, Any]]:
    """Runs of consecutive zero-volume bars (a gap ends a run), with the move into the bar after the run."""
    zero = s.volume == 0
    joined_before = zero & np.r_[False, zero[:-1]] & ~s.gap_before  # a zero bar right after one, no gap between
    joined_after = np.r_[joined_before[1:], False]
    out = []
    for a, b in zip(np.flatnonzero(zero & ~joined_before), np.flatnonzero(zero & ~joined_after), strict=True):
        out.append(
            {
                "start": _iso(s.t[a]),
                "end": _iso(s.t[b]),
                "bars": int(b - a + 1),
                "flat_price": bool(np.ptp(s.prices[a : b + 1]) == 0),
                "jump_after": _move(s, b) if b + 1 < s.n else None,
            }
        )
    return out


def _move(s: _Series, i: int) -> dict[str, Any]:
    """The move from bar ``i`` to bar ``i + 1``: close-to-close and previous-close-to-open, with robust z-scores."""
    return {
        "open_time": _iso(s.t[i + 1]),
        "log_return": _round(s.log_return[i]),
        "z": _z(s, s.log_return[i]),
        "open_gap": _round(s.open_gap[i]),
        "open_gap_z": _z(s, s.open_gap[i]),
    }


def _jump(s: _Series, i: int, threshold: float) -> dict[str, Any]:
    """A listed move, flagged with what surrounds it: a gap, a zero-volume bar on either side, the threshold."""
    return {
        **_move(s, i),
        "after_gap": bool(s.gap_before[i + 1]),
        "next_to_zero_volume": bool(s.volume[i] == 0 or s.volume[i + 1] == 0),
        "above_threshold": bool(max(abs(s.log_return[i]), abs(s.open_gap[i])) > threshold),
    }


def _top(x: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` largest non-zero values, largest first."""
    order = np.argsort(-x, kind="stable")[:k]
    return [int(i) for i in order if x[i] > 0]


def _longest(items: list[dict[str, Any]], key: str, limit: int) -> list[dict[str, Any]]:
    """At most ``limit`` items, the largest by ``key``, back in time order."""
    if len(items) <= limit:
        return items
    keep = sorted(sorted(range(len(items)), key=lambda i: -items[i][key])[:limit])
    return [items[i] for i in keep]


def _z(s: _Series, x: float) -> float | None:
    return round(abs(float(x)) / s.sigma, 2) if s.sigma > 0 else None


def _round(x: float) -> float:
    return float(f"{float(x):.6g}")


def _iso(ms: int) -> str:
    stamp = EPOCH + dt.timedelta(milliseconds=int(ms))  # exact, unlike a float number of seconds
    return stamp.isoformat(timespec="seconds" if ms % 1000 == 0 else "milliseconds").replace("+00:00", "Z")
