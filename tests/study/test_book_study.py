"""The fold study with ``model.kind: portfolio`` end to end on real hourly bars of two assets (one fold, one epoch,
a tiny policy): it trains through the grid, trades one book beside its baselines, is deterministic, and the study
summary and report say whether it beats them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffquant.config import Config, PortfolioConfig
from diffquant.folds import plan_folds
from diffquant.study.book_report import render_book_report, summarize_book
from diffquant.study.book_run import BASELINES, PORTFOLIO, stitched_weights
from diffquant.study.fold_data import fold_data
from diffquant.study.fold_run import FOLD_JSON, load_fold, run_folds
from diffquant.train.layout import checkpoint_path
from tests.study.test_fold_run import assert_same_weights, quiet, raw_until, tables, tiny


def portfolio(**overrides: object) -> Config:
    cfg = tiny(**{"folds.last_test_end": "2024-05-01", **overrides})
    model = dataclasses.replace(
        cfg.model, kind="portfolio", portfolio=PortfolioConfig(leverage=1.0, d_attn=8, n_heads=2)
    )
    return dataclasses.replace(cfg, model=model).validate()


@pytest.fixture(scope="module")
def raws():
    return {s: raw_until(s, "2024-05-02") for s in ("BTCUSDT", "ETHUSDT")}


def run(cfg: Config, raws, out: Path):
    t = tables(cfg, raws)
    folds = [(fold_data(f, t, cfg), out / f.name) for f in plan_folds(cfg.folds, cfg.split)]
    return run_folds(cfg, folds, quiet), [out for _, out in folds]


@pytest.fixture(scope="module")
def first_run(raws, tmp_path_factory):
    cfg, out = portfolio(), tmp_path_factory.mktemp("book")
    (result,), (folder,) = run(cfg, raws, out)
    return cfg, result, folder


def test_a_portfolio_fold_study_runs_end_to_end_and_is_deterministic(raws, first_run, tmp_path):
    cfg, result, folder = first_run
    assert result.groups == {PORTFOLIO: ["BTCUSDT", "ETHUSDT"]} and list(result.entries) == [PORTFOLIO]
    entry = result.entries[PORTFOLIO]
    assert set(BASELINES) <= set(entry) and set(entry["assets"]) == {"BTCUSDT", "ETHUSDT"}
    table = result.returns[PORTFOLIO]
    assert {PORTFOLIO, f"{PORTFOLIO}_seed_3", *BASELINES} <= set(table.columns)
    assert np.isfinite(table.drop(columns="time").to_numpy()).all()
    weights = stitched_weights([folder])
    assert (weights[["w_BTCUSDT", "w_ETHUSDT"]].abs().sum(axis=1) <= 1.0 + 1e-9).all()
    # per-asset nets add up to the book's
    np.testing.assert_allclose(weights[["net_BTCUSDT", "net_ETHUSDT"]].sum(axis=1), table[PORTFOLIO], atol=1e-15)

    (again,), _ = run(cfg, raws, tmp_path / "b")
    pd.testing.assert_frame_equal(again.returns[PORTFOLIO], table)
    assert load_fold(folder).entries == result.entries and (folder / FOLD_JSON).exists()

    summary, tracks, folds = summarize_book(cfg, [result])
    assert list(tracks) == [PORTFOLIO] and len(tracks[PORTFOLIO]) == len(table)
    report = render_book_report("tiny", summary, folds)
    assert "The portfolio" in report and set(summary["versus"]) == set(BASELINES)
    assert all(b in summary["tracks"][PORTFOLIO] for b in (PORTFOLIO, *BASELINES))


def test_the_portfolio_fold_does_not_leak_its_test_period(raws, first_run, tmp_path):
    """Every bar of one asset from the test start on is replaced by another random walk: the book's models are
    bit-identical, its test results are not."""
    cfg, result, folder = first_run
    test_start = pd.Timestamp(result.fold["test_start"], tz="UTC")
    raw = raws["ETHUSDT"]
    bars = raw.bars.copy()
    after = bars["open_time"] >= test_start
    factor = np.exp(np.cumsum(np.random.default_rng(0).normal(0.0, 0.01, after.sum())))
    for col in ("open", "high", "low", "close"):
        bars.loc[after, col] = bars.loc[after, col] * factor
    changed = {**raws, "ETHUSDT": dataclasses.replace(raw, bars=bars)}
    (leaked,), (other,) = run(cfg, changed, tmp_path)
    for name in ("best", "final"):
        assert_same_weights(
            checkpoint_path(folder / "models" / PORTFOLIO / "policy", 3, name),
            checkpoint_path(other / "models" / PORTFOLIO / "policy", 3, name),
        )
    assert not leaked.returns[PORTFOLIO][PORTFOLIO].equals(result.returns[PORTFOLIO][PORTFOLIO])
