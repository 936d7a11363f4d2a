"""The fold study with ``model.kind: portfolio`` end to end on real hourly bars of two assets (one fold, one epoch,
a tiny policy): it trains through the grid, tunes each seed's hysteresis on val, trades one book beside its
baselines (the single-asset policies' average among them), is deterministic, and the study summary and report say
whether it beats them."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from diffquant import tracking
from diffquant.config import Config, PortfolioConfig
from diffquant.data.contracts import to_ms
from diffquant.deploy.book_bundle import as_book_input
from diffquant.deploy.fold_model import fold_book_bundle, fold_test_window
from diffquant.evaluate.book import BookSeries, book_decisions, book_metrics
from diffquant.evaluate.compare import headline_artifact
from diffquant.evaluate.entries import BASELINES, PORTFOLIO, SINGLE_AVERAGE
from diffquant.evaluate.hysteresis import apply_hysteresis
from diffquant.evaluate.metric_names import study_metric, verdict_metric
from diffquant.evaluate.scoring import Scorer
from diffquant.evaluate.threshold_search import search_book, search_config
from diffquant.evaluate.walk_forward import policy_decisions, walk_forward
from diffquant.folds import plan_folds
from diffquant.io import write_json, write_parquet
from diffquant.study.book_report import render_book_report, summarize_book
from diffquant.study.book_run import single_config, stitched_weights
from diffquant.study.fold_data import fold_data, write_folds
from diffquant.study.fold_models import fold_groups, load_models
from diffquant.study.fold_result import FOLD_JSON, load_fold
from diffquant.study.fold_run import run_folds, write_choices
from diffquant.train.layout import checkpoint_path
from diffquant.train.policy_training import TrainingData, resume_spec
from stages import evaluate
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


def group_models(cfg: Config, data, folder: Path, name: str):
    """A trained group of the fold in ``folder`` (run_folds' layout: ``models/<group>/<kind>``)."""
    (group,) = [g for g in fold_groups(cfg, data) if g.name == name]
    return load_models(group, lambda g, kind: folder / "models" / g.name / kind)


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
    both = ["BTCUSDT", "ETHUSDT"]
    assert result.groups == {PORTFOLIO: both, "pooled": both} and list(result.entries) == [PORTFOLIO]
    entry = result.book_entry()
    # each seed's thresholds were searched on val: every trial counts towards the portfolio's DSR
    assert set(entry.tuned.portfolio) == {"3"}
    assert entry.trials[f"{PORTFOLIO}_n"] == cfg.thresholds.trials + 1
    assert list(entry.baselines) == list(BASELINES) and set(entry.assets) == {"BTCUSDT", "ETHUSDT"}
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


def test_the_single_asset_average_is_the_mean_of_the_single_asset_policies(raws, first_run):
    """The baseline's book (each asset's single-asset seed ensemble at 1/A) returns, bar for bar, the mean of the
    single-asset engine's returns of those policies, each on its own asset (costs are linear in the weights)."""
    cfg, result, folder = first_run
    assert cfg.sim.impact_eta == 0.0
    single = single_config(cfg)
    data = fold_data(plan_folds(cfg.folds, cfg.split)[0], tables(cfg, raws), cfg)
    models = group_models(cfg, data, folder, "pooled")["policy"]
    scorer = Scorer(cfg.sim, cfg.data.timeframe_minutes, cfg.eval.days_per_year)
    nets = []
    for symbol, asset in data.assets.items():
        executed = []
        for seed, model in models.items():
            chosen = search_config(single, asset.val, policy_decisions(model, asset.val), scorer).best
            executed.append(apply_hysteresis(policy_decisions(model, asset.test).raw, chosen))
            assert result.book_entry().tuned.singles[symbol][seed].hysteresis.enter_long == chosen.enter_long
        nets.append(walk_forward(asset.test, np.mean(executed, axis=0), cfg.sim).record["net"].to_numpy())
    np.testing.assert_allclose(result.returns[PORTFOLIO][SINGLE_AVERAGE], np.mean(nets, axis=0), rtol=0, atol=1e-15)


def test_the_portfolio_trains_the_single_asset_study_s_policies(raws):
    """The single-asset policies beside a portfolio have the single-asset study's resume identity, so a portfolio
    study on the folds of a single-asset one (or the other way round) resumes those seeds instead of retraining."""
    cfg = portfolio()
    data = fold_data(plan_folds(cfg.folds, cfg.split)[0], tables(cfg, raws), cfg)
    asset = data.assets["BTCUSDT"]
    training = TrainingData(asset.samples, (asset.val,), "digest", "fold")
    alone = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, kind="single"))
    assert resume_spec(single_config(cfg), training, 3) == resume_spec(alone, training, 3)
    assert resume_spec(cfg, training, 3) != resume_spec(alone, training, 3)


def test_the_book_s_thresholds_are_searched_on_its_val_book(raws, first_run):
    """The search scores exactly the book the val check prices (its first trial is the configured thresholds, with
    the same metrics), never ends worse on val than them, and the fold traded the thresholds it chose."""
    cfg, result, folder = first_run
    data = fold_data(plan_folds(cfg.folds, cfg.split)[0], tables(cfg, raws), cfg)
    model = group_models(cfg, data, folder, PORTFOLIO)["policy"]["3"]
    scorer = Scorer(cfg.sim, cfg.data.timeframe_minutes, cfg.eval.days_per_year)
    val = BookSeries.of([a.val for a in data.assets.values()], list(data.assets))
    found = search_book(cfg, val, book_decisions(model, val), scorer)
    configured = book_metrics(scorer, model, val, cfg.eval.hysteresis)
    first = found.trials.iloc[0]
    assert first["number"] == 0 and first["sharpe"] == configured["sharpe"]
    assert first["rebalances"] == configured["rebalances"]
    if first["feasible"]:
        assert found.metrics[cfg.thresholds.objective] >= configured[cfg.thresholds.objective]
    assert result.book_entry().tuned.portfolio["3"].hysteresis.enter_long == found.best.enter_long


def test_the_folds_book_as_a_model_gives_the_weights_it_held(raws, first_run, tmp_path, monkeypatch):
    """The fold's book as a bundle, given each asset's raw bars from the features' warm-up before its test series,
    decides the weights the fold held, bit for bit; published by the study (a pyfunc in a fresh MLflow store,
    registered with its gates), the loaded candidate answers the same table."""
    cfg, result, folder = first_run
    bundle, _ = fold_book_bundle(cfg, folder)
    data = fold_data(plan_folds(cfg.folds, cfg.split)[0], tables(cfg, raws), cfg)
    _, test_end = fold_test_window(folder)
    bars = {}
    for symbol in bundle.symbols:
        ms = to_ms(raws[symbol].bars["open_time"])
        first = int(np.searchsorted(ms, data.assets[symbol].test.open_time[0])) - bundle.warmup
        bars[symbol] = raws[symbol].bars.iloc[first : int(np.searchsorted(ms, test_end.value // 1_000_000))]
    out = bundle.decide(as_book_input(bars))
    held = stitched_weights([folder])
    step = (1 + cfg.sim.execution_lag_bars) * cfg.data.timeframe_minutes * 60_000
    decided = out.set_index("open_time").loc[to_ms(held["time"]) - step]  # the weight each test bar held
    for symbol in bundle.symbols:
        np.testing.assert_array_equal(decided[f"weight_{symbol}"].to_numpy(), held[f"w_{symbol}"].to_numpy())
    assert (held[[f"w_{s}" for s in bundle.symbols]] != 0).any().all()  # both assets were traded

    # the evaluate stage on that fold: report, metrics and the registry (a fresh MLflow store under tmp_path), from
    # what split, train and threshold-opt would hand it: the fold's cut, its groups' seeds, its choices on val
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow sets it; put back after the test
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    for symbol, table in raws.items():  # what the data stages write that the registered model's example reads
        write_parquet(table.bars, tmp_path / "bars" / symbol / "bars.parquet")
        write_parquet(table.funding, tmp_path / "raw" / symbol / "funding.parquet")
    write_folds([data], tmp_path / "split")
    for group in fold_groups(cfg, data):
        shutil.copytree(folder / "models" / group.name / "policy", tmp_path / "train" / group.name / group.digest)
    choices = {PORTFOLIO: result.book_entry().tuned}
    write_choices(tmp_path / "thresholds" / data.fold.name, choices)
    try:
        parent = tracking.start_run(tmp_path, "study", {"role": "study"})
        write_json(tmp_path / "run.json", {"run_id": parent.run_id})
        folders = ["--split", "split", "--train-dir", "train", "--thresholds", "thresholds", "--bars", "bars"]
        evaluate.main([*folders, "--raw", "raw", "--run-file", "run.json", "--out", "study", "--metrics", "study.json"])
        name = f"diffquant-{cfg.experiment}-{PORTFOLIO}"
        loaded = mlflow.pyfunc.load_model(f"models:/{name}@candidate")
        logged = parent.client.get_run(parent.run_id).data.metrics
        tags = parent.client.get_run(parent.run_id).data.tags
        headline = tracking.download_artifact(tmp_path, parent.run_id, headline_artifact("portfolio"), tmp_path / "a")
    finally:
        mlflow.set_tracking_uri(None)  # later tests in this process use their own stores
    assert (tmp_path / "study" / "folds" / data.fold.name / "fold.json").is_file()
    pd.testing.assert_frame_equal(loaded.predict(as_book_input(bars)), out, check_exact=True)
    verdict = json.loads((tmp_path / "study.json").read_text())["registry"]["policies"][PORTFOLIO]
    assert [g["key"] for g in verdict["gates"]] == ["psr", "dsr", "beats_buy_and_hold"]
    assert verdict["gates"][2]["label"] == "Sharpe minus 1/N's, 95% interval low"
    assert "## Registry" in (tmp_path / "study" / "report.md").read_text()
    assert study_metric(PORTFOLIO, PORTFOLIO, "sharpe") in logged and "pbo" in logged
    # the verdict over the book and its baselines against 1/N: report, study.json, metrics, tags, the headline track
    summary = json.loads((tmp_path / "study.json").read_text())["verdict"]
    assert summary["benchmark"] == "equal_weight" and summary["headline"] == PORTFOLIO
    assert {"inverse_vol", "xs_momentum", SINGLE_AVERAGE} <= set(summary["strategies"])
    assert "## Verdict: the whole search against 1/N" in (tmp_path / "study" / "report.md").read_text()
    assert logged[verdict_metric("spa_p")] == summary["spa"]["consistent"]
    assert tags["verdict.mcs"] == ",".join(summary["mcs"]["included"])
    track = pd.read_csv(headline, parse_dates=["time"])
    pd.testing.assert_series_equal(track[PORTFOLIO], result.returns[PORTFOLIO][PORTFOLIO], check_exact=False)
