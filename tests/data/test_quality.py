"""The data-quality report: the shipped data's known exchange anomalies, and each finding on small tables."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from diffquant.data.contracts import validate_bars
from diffquant.data.quality import quality_report
from diffquant.data.sources import apply_start, load_bundled

BUNDLED = Path(__file__).resolve().parents[2] / "data_source" / "bundled"
MIN = 60_000


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    return quality_report(apply_start(load_bundled(BUNDLED, "BTCUSDT", 5), "2024-01-01").bars, 5)


def run_at(report: dict[str, Any], start: str) -> dict[str, Any]:
    (run,) = [r for r in report["zero_volume_runs"] if r["start"] == start]
    return run


def test_shipped_data_is_complete_and_clean(shipped: dict[str, Any]) -> None:
    assert shipped["n_bars"] == shipped["expected_bars"] == 210_528
    assert (shipped["first_open_time"], shipped["last_open_time"]) == ("2024-01-01T00:00:00Z", "2025-12-31T23:55:00Z")
    assert shipped["gaps"] == []
    s = shipped["summary"]
    assert s["zero_volume_bars"] == 21 and s["zero_volume_runs"] == 4
    assert all(s[k] == 0 for k in s if k.endswith(("_stamps", "_rows")))
    json.dumps(shipped, allow_nan=False)


def test_shipped_maintenance_2024_10_28_is_a_flat_zero_volume_run(shipped: dict[str, Any]) -> None:
    run = run_at(shipped, "2024-10-28T20:00:00Z")
    assert (run["end"], run["bars"], run["flat_price"]) == ("2024-10-28T21:05:00Z", 14, True)
    assert run["jump_after"]["open_time"] == "2024-10-28T21:10:00Z"
    assert run["jump_after"]["open_gap"] == pytest.approx(np.log(69650.0 / 69566.1), rel=1e-5)


def test_shipped_filler_2025_01_29_and_the_jumps_after_it(shipped: dict[str, Any]) -> None:
    run = run_at(shipped, "2025-01-29T01:25:00Z")
    assert run["flat_price"] and run["bars"] == 2
    assert run["jump_after"]["open_gap"] == pytest.approx(np.log(101520.0 / 101770.1), rel=1e-5)
    # On this liquid market a bar opens at the previous close: the filler's jumps are the largest open gaps.
    gaps = {j["open_time"]: j for j in shipped["largest_open_gaps"]}
    assert shipped["largest_open_gaps"][0]["open_time"] == "2025-01-29T01:35:00Z"
    assert gaps["2025-01-29T01:35:00Z"]["next_to_zero_volume"]
    assert {"2024-10-28T21:10:00Z", "2025-01-29T02:45:00Z"} <= set(gaps)


def test_gap_reports_missing_bars_and_the_move_across(make_bars: Callable) -> None:
    bars = make_bars().drop(index=[10, 11, 12]).reset_index(drop=True)
    report = quality_report(bars, 5)
    (gap,) = report["gaps"]
    assert gap["missing_bars"] == 3 and report["summary"]["missing_bars"] == 3
    assert report["expected_bars"] == report["n_bars"] + 3
    assert gap["jump"]["log_return"] == pytest.approx(np.log(bars["close"][10] / bars["close"][9]), rel=1e-5)
    assert gap["after"] == "2024-01-01T00:45:00Z" and gap["before"] == "2024-01-01T01:05:00Z"
    assert quality_report(validate_bars(bars, "bars"), 5) == report  # canonical and raw frames read alike


def test_zero_volume_runs_flat_or_not_and_split_by_gaps(make_bars: Callable) -> None:
    bars = make_bars()
    bars.loc[5:7, ["open", "high", "low", "close"]] = bars["close"][4]
    bars.loc[5:7, "volume"] = 0.0
    bars.loc[20:23, "volume"] = 0.0
    bars = bars.drop(index=22).reset_index(drop=True)  # a gap splits the second run
    runs = quality_report(bars, 5)["zero_volume_runs"]
    assert [(r["bars"], r["flat_price"]) for r in runs] == [(3, True), (2, False), (1, False)]
    assert runs[0]["jump_after"]["open_time"] == "2024-01-01T00:40:00Z"


def test_large_moves_and_robust_z() -> None:
    r = np.r_[np.tile([0.001, -0.001], 20), 0.02, np.tile([0.001, -0.001], 5)]
    close = 100 * np.exp(np.cumsum(r))
    open_ = np.r_[100.0, close[:-1]]
    bars = pd.DataFrame(
        {
            "open_time": np.arange(len(r)) * 5 * MIN,
            "open": open_,
            "high": close.clip(min=open_),
            "low": close.clip(max=open_),
            "close": close,
            "volume": 1.0,
        }
    )
    report = quality_report(bars, 5, jump_threshold=0.01)
    top = report["largest_moves"][0]
    assert top["log_return"] == pytest.approx(0.02) and top["above_threshold"]
    assert top["z"] == pytest.approx(0.02 / (1.4826 * 0.001), abs=0.01)
    assert report["summary"]["large_moves"] == 1
    assert report["largest_open_gaps"] == []  # every bar opens at the previous close


def test_raw_frame_is_described_before_validation(make_bars: Callable) -> None:
    bars = make_bars().astype({"open_time": object})
    bars.loc[3, "open_time"] = bars["open_time"][2]  # duplicated
    bars.loc[[10, 11], "open_time"] = bars["open_time"][[11, 10]].to_numpy()  # unsorted
    bars.loc[15, "open_time"] = "not a time"
    bars.loc[20, "close"] = np.nan
    bars.loc[25, "low"] = 0.0
    bars.loc[26, "open"] = -5.0
    bars.loc[30, "open_time"] = bars["open_time"][29] + 1000  # off the 5-minute grid
    s = quality_report(bars, 5)["summary"]
    assert (s["missing_stamps"], s["duplicated_stamps"], s["unsorted_stamps"]) == (1, 1, 1)
    assert (s["non_finite_rows"], s["non_positive_price_rows"], s["off_grid_stamps"]) == (1, 2, 1)


def test_long_lists_keep_the_largest_items_in_time_order(make_bars: Callable) -> None:
    bars = make_bars(n=60).drop(index=[5, 15, 16, 17, 30, 31, 45]).reset_index(drop=True)
    report = quality_report(bars, 5, max_items=2)
    assert report["summary"]["gaps"] == 4
    assert [g["missing_bars"] for g in report["gaps"]] == [3, 2]


def test_empty_table() -> None:
    empty = pd.DataFrame(
        {c: pd.Series([], dtype=float) for c in ("open_time", "open", "high", "low", "close", "volume")}
    )
    report = quality_report(empty, 5)
    assert report["n_bars"] == 0 and report["first_open_time"] is None and report["gaps"] == []
