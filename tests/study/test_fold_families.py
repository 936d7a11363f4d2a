"""A walk-forward fold that trains on the new inputs (funding, premium, market) of real hourly bars (BTC, ETH,
2024H1), with the training's mirror on: it trains on those channels, judges and books both assets, and its policy's
bundle decides over the fold's test window from the served model's input table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffquant.data.contracts import to_ms
from diffquant.data.inputs import at_timeframe, feature_inputs, load_assets, market_bars, model_table
from diffquant.data.universe import asset_features
from diffquant.deploy.fold_model import fold_bundle, fold_test_window
from diffquant.folds import plan_folds
from diffquant.study.fold_data import fold_data
from diffquant.study.fold_run import run_fold
from diffquant.train import checkpoint
from diffquant.train.layout import checkpoint_path
from tests.repo_copy import REPO
from tests.study.test_fold_run import quiet, tiny

pytestmark = pytest.mark.slow  # trains a (tiny) policy and proxy

FEATURES = {
    "features.funding": {"channels": ["last", "zscore", "paid_24h"], "zscore_settlements": 21},
    "features.premium": {"channels": ["last", "mean"]},
    "features.market": {"channels": ["return", "excess", "reference"], "lookback_bars": 8},
}


def test_a_fold_trains_and_trades_on_the_new_inputs(tmp_path: Path) -> None:
    cfg = tiny(**FEATURES)
    assert cfg.train.mirror and cfg.features.market.symbols == ["BTCUSDT", "ETHUSDT"]
    assets, market_raw = load_assets(cfg, REPO, cfg.data.universe)
    stop = pd.Timestamp("2024-06-02", tz="UTC")
    assets = {s: dataclasses.replace(r, bars=r.bars[r.bars["open_time"] < stop]) for s, r in assets.items()}
    market = market_bars({s: assets[s] for s in market_raw}, 60)
    tables = {s: asset_features(raw, cfg, market).features for s, raw in assets.items()}
    first = plan_folds(cfg.folds, cfg.split)[0]
    result = run_fold(cfg, fold_data(first, tables, cfg), tmp_path / first.name, quiet)
    best = checkpoint_path(tmp_path / first.name / "models" / "pooled" / "policy", 3, "best")
    names = checkpoint.load(best)["spec"]["policy"]["feature_names"]
    assert [n for n in names if n.startswith(("funding_", "premium_", "market_"))] == [
        "funding_last",
        "funding_zscore",
        "funding_paid_24h",
        "premium_last",
        "premium_mean",
        "market_return",
        "market_excess",
        "market_reference",
    ]
    assert set(result.returns) == {"BTCUSDT", "ETHUSDT"}

    bundle, _ = fold_bundle(cfg, tmp_path / first.name, "ETHUSDT")
    start, end = fold_test_window(tmp_path / first.name)
    tf_tables = at_timeframe(assets["ETHUSDT"], cfg.features, 60)[0]
    inputs = model_table(feature_inputs(tf_tables, assets["ETHUSDT"].funding, 60, market, "ETHUSDT"), cfg.features)
    ms = inputs["open_time"].to_numpy()
    first_row = int(np.searchsorted(ms, to_ms(pd.Series([start]))[0]))
    window = inputs.iloc[first_row - bundle.min_bars + 1 : int(np.searchsorted(ms, to_ms(pd.Series([end]))[0]))]
    decided = bundle.decide(window.reset_index(drop=True))
    assert len(decided) == len(window) - bundle.min_bars + 1 and np.isfinite(decided["position"]).all()
    assert set(bundle.input_columns) == {
        "funding_rate",
        "funding_settlements",
        "mark_close",
        "close_BTCUSDT",
        "close_ETHUSDT",
    }
