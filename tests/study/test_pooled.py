"""The study's tracks on synthetic returns with known answers: the universe book leaves absent assets out, the
stitched cost sweep is linear in the cost multiple, the asset x fold table is each fold's numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from diffquant.evaluate.metrics import sharpe
from diffquant.study.pooled import configurations, judge_track, universe_book


def track(times: pd.DatetimeIndex, rng: np.random.Generator, fold: str = "f1") -> pd.DataFrame:
    n = len(times)
    cost = np.abs(rng.normal(0, 1e-4, n))
    return pd.DataFrame(
        {
            "time": times,
            "policy": rng.normal(1e-4, 1e-3, n) - cost,
            "policy_cost": cost,
            "policy_seed_1": rng.normal(0, 1e-3, n),
            "momentum": rng.normal(0, 1e-3, n),
            "buy_and_hold": rng.normal(0, 1e-3, n),
            "fold": fold,
        }
    )


def test_universe_book_averages_only_the_assets_with_data() -> None:
    rng = np.random.default_rng(0)
    times = pd.date_range("2024-01-01", periods=100, freq="h", tz="UTC")
    a, b = track(times, rng), track(times[50:], rng)  # b is listed half way
    book = universe_book({"A": a, "B": b})
    assert len(book) == 100 and list(book["assets"]) == [1] * 50 + [2] * 50
    assert book["policy"].iloc[10] == a["policy"].iloc[10]  # not (a + 0) / 2
    assert book["policy"].iloc[60] == pytest.approx((a["policy"].iloc[60] + b["policy"].iloc[10]) / 2)
    assert configurations(book) == ["policy", "policy_seed_1", "momentum", "buy_and_hold"]


def test_cost_sweep_of_a_track_is_linear_in_the_multiple() -> None:
    rng = np.random.default_rng(1)
    t = track(pd.date_range("2024-01-01", periods=500, freq="h", tz="UTC"), rng)
    ann = math.sqrt(24 * 365)
    out = judge_track(t, {"policy": 10}, 24 * 365, 24, 0, [0.0, 1.0, 2.0])
    assert out["policy"]["costs"]["1x"] == pytest.approx(sharpe(t["policy"].to_numpy(), ann))
    gross = t["policy"] + t["policy_cost"]
    assert out["policy"]["costs"]["0x"] == pytest.approx(sharpe(gross.to_numpy(), ann))
    assert out["policy"]["costs"]["2x"] == pytest.approx(sharpe((gross - 2 * t["policy_cost"]).to_numpy(), ann))
    assert out["policy"]["dsr"] is not None and out["buy_and_hold"]["dsr"] is None  # no trials behind holding
