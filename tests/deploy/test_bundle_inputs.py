"""The new inputs through the data stages, the fold cut and the served model.

The data stages (download -> aggregate -> features, for a universe) keep what each asset's features read (mark bars,
the market's bars) in their folders; those files give the universe computation's features, and again, as the served
model's input table does through the bundle (single asset and book), whose MLflow signature lists the columns; a
fold's samples carry the channels; a missing or bad column is refused by name; the paper trader refuses a policy its
feeds cannot serve. Real shipped bars (BTC, ETH, SOL at 1 h)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.models import infer_signature

from diffquant.config import Config, ModelConfig, SimConfig, build_section, load
from diffquant.data.contracts import to_ms
from diffquant.data.features import FEATURE_PREFIX, feature_columns, features_from_inputs, warmup_bars
from diffquant.data.inputs import model_columns, model_table, stage_inputs
from diffquant.data.universe import universe_features
from diffquant.deploy.book_bundle import BookBundle, as_book_input
from diffquant.deploy.bundle import PolicyBundle
from diffquant.deploy.ledger import Ledger
from diffquant.deploy.paper import PaperSettings, PaperTrader
from diffquant.errors import ConfigError, DataError
from diffquant.evaluate.member import Member
from diffquant.folds import plan_folds
from diffquant.io import read_parquet
from diffquant.model.policy import PolicyNetwork
from diffquant.model.portfolio import PortfolioPolicy
from diffquant.study.fold_data import fold_data
from diffquant.tracking.models import model_output
from stages import aggregate, download, features
from tests.data.families_data import ALL_CHANNELS, SYMBOLS
from tests.repo_copy import REPO, deep_update, tiny_params

CTX = 24
TINY = {"itransformer": {"d_model": 8, "n_heads": 2, "n_layers": 1, "d_ff": 16}, "head": {"dense": [8]}}
NEW = ("funding_", "premium_", "market_")


def params(**override: Any) -> dict[str, Any]:
    base = tiny_params(
        data={"symbols": SYMBOLS, "timeframe_minutes": 60, "start": "2025-09-01"},
        features=ALL_CHANNELS,
        window={"context": CTX, "horizon": 8, "stride": 8},
        model=TINY,
        baselines={"momentum_lookbacks": [6, 12]},
        folds={
            "scheme": "expanding",
            "train_start": "2025-09-01",
            "val_months": 1,
            "test_months": 1,
            "first_test": "2025-11-01",
            "last_test_end": "2025-12-01",
        },
    )
    return deep_update(base, override)


def run_data_stages(params_file: Path, out: Path) -> None:
    """download -> aggregate -> features into ``out/{raw,bars,features}``, as dvc.yaml runs them."""
    p = ["--params", str(params_file)]
    download.main([*p, "--out", str(out / "raw"), "--metrics", str(out / "d.json")])
    aggregate.main([*p, "--raw", str(out / "raw"), "--out", str(out / "bars"), "--metrics", str(out / "a.json")])
    folders = ["--bars", str(out / "bars"), "--raw", str(out / "raw"), "--out", str(out / "features")]
    features.main([*p, *folders, "--metrics", str(out / "f.json")])


def stage_table(out: Path, symbol: str) -> pd.DataFrame:
    return read_parquet(out / "features" / f"{symbol}.parquet", "features")


def inputs_of(out: Path, symbol: str, cfg: Config) -> pd.DataFrame:
    return model_table(stage_inputs(out / "bars", out / "raw", symbol, cfg), cfg.features)


@pytest.fixture(scope="module")
def stage_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    """The data stages run for a universe on the shipped data with every family but user columns; their folder and
    params."""
    tmp = tmp_path_factory.mktemp("universe")
    (tmp / "params.yaml").write_text(yaml.safe_dump(params(), sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVC_ROOT", str(REPO))
        mp.delenv("DVC_STAGE", raising=False)
        run_data_stages(tmp / "params.yaml", tmp / "u")
    return tmp / "u", load(tmp / "params.yaml")


def policy_bundle(cfg: Config, n_features: int) -> PolicyBundle:
    torch.manual_seed(0)
    model = PolicyNetwork(build_section(ModelConfig, TINY, "model"), n_features, CTX)
    return PolicyBundle((Member("seed_0", model, cfg.eval.hysteresis),), cfg.features, 60, SimConfig())


def test_the_data_stages_keep_what_each_assets_features_read(stage_out: tuple[Path, Config]) -> None:
    """Per asset, the stages' feature table is the in-memory universe computation's (``universe_features``) bit for
    bit, and their folders give it again."""
    out, cfg = stage_out
    assert sorted(p.name for p in (out / "bars" / "market").iterdir()) == sorted(f"{s}.parquet" for s in SYMBOLS)
    in_memory = universe_features(cfg, REPO)[1]
    for symbol in SYMBOLS:
        assert (out / "bars" / symbol / "mark.parquet").is_file() and not (
            out / "bars" / symbol / "columns.parquet"
        ).exists()
        table = stage_table(out, symbol)
        assert sum(n.startswith(NEW) for n in feature_columns(table)) == 10
        pd.testing.assert_frame_equal(table, in_memory[symbol].features, check_exact=True)
        again = features_from_inputs(stage_inputs(out / "bars", out / "raw", symbol, cfg), cfg.features, 60)
        pd.testing.assert_frame_equal(again, table, check_exact=True)


def test_the_served_models_input_table_gives_the_stages_features(stage_out: tuple[Path, Config]) -> None:
    """The bundle computes the features from its input table (bars + the families' columns) bit for bit as the
    data stages did, from any start past the warm-up; its MLflow signature lists every column it reads."""
    out, cfg = stage_out
    table = stage_table(out, "SOLUSDT")
    names = feature_columns(table)
    bundle = policy_bundle(cfg, len(names))
    assert (
        bundle.input_columns
        == model_columns(cfg.features)
        == [
            "funding_rate",
            "funding_settlements",
            "mark_close",
            *(f"close_{s}" for s in SYMBOLS),
        ]
    )
    inputs = inputs_of(out, "SOLUSDT", cfg)
    w = warmup_bars(cfg.features, 60)
    for start in (0, 400):
        series = bundle.series(inputs.iloc[start:].reset_index(drop=True))
        want = table.iloc[start + w - 1 :]
        np.testing.assert_array_equal(series.features, want[[FEATURE_PREFIX + n for n in names]].to_numpy())
        np.testing.assert_array_equal(series.open_time, to_ms(want["open_time"]))
    example = inputs.tail(bundle.min_bars).reset_index(drop=True)
    decided = model_output(bundle, example)
    assert len(decided) == 1 and np.isfinite(decided["position"]).all()
    signature = infer_signature(example, decided)
    assert set(bundle.input_columns) <= set(signature.inputs.input_names())


@pytest.mark.parametrize(
    ("column", "value", "match"),
    [
        ("mark_close", None, r"no column mark_close; this policy's premium features"),
        ("mark_close", -1.0, r"mark_close at row\(s\) \[5\] is not a price > 0"),
        ("close_ETHUSDT", None, r"no column\(s\) \['close_ETHUSDT'\]; this policy's market features"),
        ("funding_settlements", 0.5, r"funding_rate / funding_settlements at row\(s\) \[5\]"),
    ],
    ids=["no_mark", "bad_mark", "no_market_close", "bad_count"],
)
def test_a_missing_or_bad_input_column_is_refused_by_name(
    stage_out: tuple[Path, Config], column: str, value: float | None, match: str
) -> None:
    out, cfg = stage_out
    inputs = inputs_of(out, "BTCUSDT", cfg).tail(800).reset_index(drop=True)
    bundle = policy_bundle(cfg, len(feature_columns(stage_table(out, "BTCUSDT"))))
    if value is None:
        inputs = inputs.drop(columns=[column])
    else:
        inputs.loc[5, column] = value
    with pytest.raises(DataError, match=match):
        bundle.decide(inputs)


def test_a_portfolio_book_reads_the_same_columns_per_asset(stage_out: tuple[Path, Config]) -> None:
    out, cfg = stage_out
    names = feature_columns(stage_table(out, "BTCUSDT"))
    torch.manual_seed(0)
    policy = PortfolioPolicy(build_section(ModelConfig, TINY, "model"), len(names), CTX)
    book = BookBundle((Member("seed_0", policy, cfg.eval.hysteresis),), tuple(SYMBOLS), cfg.features, 60, SimConfig())
    tables = {s: inputs_of(out, s, cfg).tail(600) for s in SYMBOLS}
    series = book.book_series(as_book_input(tables))
    w = warmup_bars(cfg.features, 60)
    for a, symbol in enumerate(SYMBOLS):
        want = stage_table(out, symbol).iloc[-600 + w :]
        got = series.assets[a].features
        np.testing.assert_array_equal(got, want[[FEATURE_PREFIX + n for n in names]].to_numpy())
    assert np.isfinite(book.decide(as_book_input(tables))[[f"weight_{s}" for s in SYMBOLS]].to_numpy()).all()


def test_a_fold_cuts_the_new_channels_with_the_rest(stage_out: tuple[Path, Config]) -> None:
    out, cfg = stage_out
    tables = {s: stage_table(out, s) for s in SYMBOLS}
    (fold,) = plan_folds(cfg.folds, cfg.split)
    data = fold_data(fold, tables, cfg)
    for symbol, asset in data.assets.items():
        names = asset.samples.feature_names
        assert names == feature_columns(tables[symbol])
        table = tables[symbol].set_index(to_ms(tables[symbol]["open_time"]))
        first = asset.samples.open_time[3]
        rows = table.loc[first:].iloc[: asset.samples.features.shape[1]]
        np.testing.assert_array_equal(asset.samples.features[3], rows[[FEATURE_PREFIX + n for n in names]].to_numpy())
        assert to_ms(tables[symbol]["open_time"]).max() >= asset.test.open_time.max()


def test_the_paper_trader_refuses_a_policy_its_feeds_cannot_serve(stage_out: tuple[Path, Config], tmp_path) -> None:
    _, cfg = stage_out
    bundle = policy_bundle(cfg, 16)
    with pytest.raises(ConfigError, match=r"features read \['funding_rate', 'funding_settlements', 'mark_close'"):
        PaperTrader(bundle, Ledger(f"sqlite:///{tmp_path / 'ledger.db'}"), PaperSettings(SimConfig()))


def test_one_asset_gets_the_same_features_and_model_inputs(tmp_path: Path, monkeypatch) -> None:
    """download -> aggregate -> features for BTC alone with every family (its market named in
    features.market.symbols): the same feature table as the universe computation, and its model-input table has the
    families' columns."""
    split = {"train_start": "2025-09-01", "val_start": "2025-10-01", "test_start": "2025-11-01"}
    one = params(data={"symbol": "BTCUSDT", "symbols": []}, split={**split, "backtest_start": "2025-12-01"})
    one["features"]["market"] = {**one["features"]["market"], "symbols": SYMBOLS}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(one, sort_keys=False))
    monkeypatch.setenv("DVC_ROOT", str(REPO))
    monkeypatch.delenv("DVC_STAGE", raising=False)
    run_data_stages(tmp_path / "params.yaml", tmp_path)
    cfg = load(tmp_path / "params.yaml")
    table = stage_table(tmp_path, "BTCUSDT")
    assert sum(n.startswith(NEW) for n in feature_columns(table)) == 10
    assert list(inputs_of(tmp_path, "BTCUSDT", cfg).columns[6:]) == model_columns(cfg.features)
    universe_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, symbols=SYMBOLS))
    btc = universe_features(universe_cfg, REPO)[1]["BTCUSDT"].features
    pd.testing.assert_frame_equal(table, btc, check_exact=True)
