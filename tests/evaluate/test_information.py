"""Rank ICs: against scipy's Spearman where they coincide, on channels whose information is known (the future itself,
noise, a cross-sectional signal), and the forward return's timing; the command writes its table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from diffquant.data.contracts import from_ms
from diffquant.evaluate.information import Panel, rank_ic_table
from stages import information
from tests.repo_copy import REPO

HOUR = 3_600_000


def table(close: np.ndarray, start: int = 0, **channels: np.ndarray) -> pd.DataFrame:
    ms = (np.arange(len(close)) + start) * HOUR
    return pd.DataFrame({"open_time": from_ms(ms), "close": close, **{f"x_{k}": v for k, v in channels.items()}})


def walk(rng: np.random.Generator, n: int) -> np.ndarray:
    return 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))


def test_forward_returns_start_after_the_execution_lag() -> None:
    close = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    panel = Panel.of({"A": table(close, z=np.zeros(5))})
    y = panel.forward_returns(2, 60, 1)[:, 0]  # from close t+1 to close t+3
    np.testing.assert_allclose(y[:2], np.log([8.0 / 2.0, 16.0 / 4.0]))
    assert np.isnan(y[2:]).all()


def test_one_asset_time_series_ic_is_scipys_spearman() -> None:
    rng = np.random.default_rng(0)
    close = walk(rng, 3000)
    x = rng.normal(size=3000)
    x[::7] = 0.0  # ties
    panel = Panel.of({"A": table(close, x=x)})
    row = rank_ic_table(panel, [8], 60, 1, n_boot=50).iloc[0]
    y = panel.forward_returns(8, 60, 1)[:, 0]
    ok = np.isfinite(y)
    assert row.ts_ic == pytest.approx(spearmanr(x[ok], y[ok]).statistic, abs=1e-12)
    assert row.ts_low < row.ts_ic < row.ts_high and row.pairs == ok.sum()


def test_known_information_is_found_and_noise_is_not() -> None:
    """A channel that is the next 8 hours' return (a planted look-ahead) has IC 1; noise an interval around 0;
    a signal that ranks assets against each other at every bar shows in the cross-section only."""
    rng = np.random.default_rng(1)
    n, tables = 4000, {}
    for a in range(5):
        close = walk(rng, n)
        future = np.r_[np.log(close[9:] / close[1:-8]), np.full(9, 0.0)]
        tables[f"S{a}"] = table(close, future=future, noise=rng.normal(size=n), rank=np.full(n, float(a)))
    # asset a drifts up in proportion to a: the constant 'rank' channel orders the assets' returns
    for a, t in enumerate(tables.values()):
        t["close"] = t["close"] * np.exp(np.arange(n) * 2e-4 * a)
    panel = Panel.of(tables)
    rows = rank_ic_table(panel, [8], 60, 1, n_boot=200).set_index("channel")
    assert rows.loc["future", "ts_ic"] > 0.99 and rows.loc["future", "ts_low"] > 0.95
    assert rows.loc["noise", "ts_low"] < 0 < rows.loc["noise", "ts_high"]
    assert rows.loc["noise", "cs_low"] < 0 < rows.loc["noise", "cs_high"]
    assert np.isnan(rows.loc["rank", "ts_ic"])  # constant within each asset: no time-series ranks
    assert rows.loc["rank", "cs_ic"] > 0.05 and rows.loc["rank", "cs_low"] > 0


def test_cross_sectional_ic_is_the_mean_of_each_bars_spearman() -> None:
    rng = np.random.default_rng(2)
    n = 300
    tables = {f"S{a}": table(walk(rng, n), x=rng.normal(size=n)) for a in range(4)}
    tables["S0"] = tables["S0"].iloc[50:]  # listed later: three assets before
    panel = Panel.of(tables)
    row = rank_ic_table(panel, [1], 60, 1, n_boot=20).iloc[0]
    x, y = panel.channels["x"], panel.forward_returns(1, 60, 1)
    per_bar = []
    for t in range(len(panel.open_time)):
        ok = np.isfinite(x[t]) & np.isfinite(y[t])
        if ok.sum() >= 3:
            per_bar.append(spearmanr(x[t, ok], y[t, ok]).statistic)
    assert row.cs_ic == pytest.approx(np.mean(per_bar), abs=1e-12)


def test_the_command_writes_the_table(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DVC_ROOT", str(REPO))
    monkeypatch.delenv("DVC_STAGE", raising=False)
    sets = [
        "data.symbols=[BTCUSDT, ETHUSDT, SOLUSDT]",
        "data.timeframe_minutes=60",
        'data.start="2025-10-01"',
        "features.funding.channels=[last]",
        "features.market.channels=[excess]",
    ]
    information.main([*(a for s in sets for a in ("--set", s)), "--boot", "20", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "information.json").read_text())["rows"]
    assert {r["channel"] for r in rows} >= {"funding_last", "market_excess"}
    assert {r["horizon_h"] for r in rows} == {8, 24}
    assert "| `market_excess` |" in (tmp_path / "information.md").read_text()
