"""Walk-forward folds on real hourly bars (BTC, ETH 2024H1) with a tiny policy: no fold leaks its test period,
the stitched track is the folds' tracks end to end, pooled training on one asset is per-asset training, a fold
whose inputs did not change is not run again, and the paper trader replays a fold's test window as the fold booked
it."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from diffquant.compute.units import QuietHooks
from diffquant.config import Config, from_dict
from diffquant.data.sources import RawData, load_source
from diffquant.data.universe import asset_features
from diffquant.deploy.fold_model import fold_bundle, fold_record, fold_test_window
from diffquant.deploy.ledger import Ledger
from diffquant.deploy.paper import PaperSettings, PaperTrader
from diffquant.deploy.paper_session import ReplaySource, compare_with_record, replay_feed
from diffquant.errors import ConfigError, DataError
from diffquant.evaluate.baselines import funding_extreme_decisions
from diffquant.evaluate.metric_names import verdict_metric
from diffquant.evaluate.scoring import Scorer
from diffquant.folds import Fold, plan_folds
from diffquant.study.fold_data import cut_folds, fold_data, newest_cut, read_folds, read_newest_fold, write_folds
from diffquant.study.fold_result import FOLD_JSON, FoldResult, load_fold
from diffquant.study.fold_run import run_fold
from diffquant.study.kinds import study_kind
from diffquant.study.pooled import configurations, stitch, universe_book
from diffquant.train import checkpoint
from diffquant.train.layout import checkpoint_path
from tests.repo_copy import REPO, deep_update

pytestmark = pytest.mark.slow  # each fold trains a (tiny) policy and proxy

TINY: dict[str, Any] = {
    "data": {"symbols": ["BTCUSDT", "ETHUSDT"], "timeframe_minutes": 60},
    "folds": {
        "scheme": "expanding",
        "train_start": "2024-01-01",
        "val_months": 1,
        "test_months": 1,
        "first_test": "2024-04-01",
        "last_test_end": "2024-06-01",
    },
    "model": {"itransformer": {"d_model": 8, "n_heads": 1, "n_layers": 1, "d_ff": 16}, "head": {"dense": [8]}},
    "window": {"context": 24, "horizon": 8, "stride": 8},
    "train": {"epochs": 1, "batch_size": 32, "val_freq": 1, "select_min_rebalances": 1, "threads": 1, "seeds": [3]},
    "thresholds": {"trials": 2},
    "baselines": {"momentum_lookbacks": [6, 12], "proxy_batch_windows": 256},
}


def tiny(**overrides: Any) -> Config:
    params = deep_update(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    for key, value in overrides.items():
        section, name = key.split(".")
        params[section][name] = value
    return from_dict(params)


def quiet(fold: str, group: str, kind: str) -> QuietHooks:
    """Record nothing: MLflow is the stage's business, not the fold's."""
    return QuietHooks()


def raw_until(symbol: str, end: str) -> RawData:
    raw = load_source(tiny().data, REPO, symbol)
    stop = pd.Timestamp(end, tz="UTC")
    return dataclasses.replace(raw, bars=raw.bars[raw.bars["open_time"] < stop].reset_index(drop=True))


@pytest.fixture(scope="module")
def raws() -> dict[str, RawData]:
    return {s: raw_until(s, "2024-06-02") for s in ("BTCUSDT", "ETHUSDT")}


def tables(cfg: Config, raws: dict[str, RawData]) -> dict[str, pd.DataFrame]:
    return {s: asset_features(raws[s], cfg).features for s in cfg.data.universe}


def run_plan(cfg: Config, raws: dict[str, RawData], out: Path, folds: list[Fold] | None = None) -> list[FoldResult]:
    t = tables(cfg, raws)
    return [run_fold(cfg, fold_data(f, t, cfg), out / f.name, quiet) for f in folds or plan_folds(cfg.folds, cfg.split)]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(path)["model_state"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def appended(raws: dict[str, RawData], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One fold run, then the plan with a second fold appended, into the same folder."""
    cfg = tiny()
    out = tmp_path_factory.mktemp("folds")
    first, second = plan_folds(cfg.folds, cfg.split)
    (alone,) = run_plan(cfg, raws, out, [first])
    stamp = (out / first.name / FOLD_JSON).stat().st_mtime_ns
    both = run_plan(cfg, raws, out)
    return {
        "cfg": cfg,
        "out": out,
        "alone": alone,
        "both": both,
        "stamp": stamp,
        "folds": (first, second),
        "raws": raws,
    }


def test_appending_a_fold_runs_only_that_fold(appended: dict[str, Any]) -> None:
    first, second = appended["folds"]
    assert (appended["out"] / first.name / FOLD_JSON).stat().st_mtime_ns == appended["stamp"]  # not re-run
    assert appended["both"][0].to_dict() == appended["alone"].to_dict()
    assert (appended["out"] / second.name / FOLD_JSON).exists()


def test_stitched_track_is_the_folds_tracks_end_to_end(appended: dict[str, Any]) -> None:
    results = appended["both"]
    tracks = stitch(results)
    for symbol, track in tracks.items():
        expected = pd.concat([r.returns[symbol] for r in results], ignore_index=True)
        pd.testing.assert_frame_equal(track.drop(columns="fold"), expected)
        assert track["time"].is_monotonic_increasing and track["time"].diff().dropna().eq(pd.Timedelta("1h")).all()
        # each fold's book starts flat: buy-and-hold pays one full entry on the fold's first bar
        cfg = appended["cfg"]
        firsts = track.groupby("fold")["buy_and_hold_cost"].first().to_numpy()
        np.testing.assert_allclose(firsts, cfg.sim.cost_rate, rtol=1e-6)
    # the rule baselines beside buy-and-hold: the engine's books of their own decisions, nothing else
    cfg = appended["cfg"]
    first = appended["folds"][0]
    test = fold_data(first, tables(cfg, appended["raws"]), cfg).assets["ETHUSDT"].test
    scorer = Scorer(cfg.sim, cfg.data.timeframe_minutes, cfg.eval.days_per_year)
    hold_vt = scorer.constant(test, 1.0, cfg.baselines.vol_target)[0].record
    rule = scorer.positions(test, funding_extreme_decisions(test, cfg.baselines.funding_extreme, 8))[0].record
    track = tracks["ETHUSDT"][tracks["ETHUSDT"]["fold"] == first.name]
    np.testing.assert_array_equal(track["buy_and_hold_vt"].to_numpy(), hold_vt["net"])
    np.testing.assert_array_equal(track["funding_extremes_cost"].to_numpy(), rule["commission"])
    assert not np.array_equal(hold_vt["net"], track["buy_and_hold"].to_numpy())  # the target scaled it
    assert (rule["trade"] != 0).any()  # the rule traded in that quarter
    book = universe_book(tracks)
    row = len(book) // 2
    assert book["policy"].iloc[row] == pytest.approx(np.mean([t["policy"].iloc[row] for t in tracks.values()]))
    assert (book["assets"] == 2).all()


def test_the_study_of_the_folds_judges_the_whole_search_in_its_verdict(appended: dict[str, Any], tmp_path) -> None:
    """The study stage's library entry on the two folds: the report's Verdict section, study.json's verdict, its
    MLflow metrics and tags, and the universe track among the artifacts (what compare reads back)."""
    cfg, out = appended["cfg"], appended["out"]
    study = study_kind(cfg).judge_study(appended["both"], [out / f.name for f in appended["folds"]], tmp_path)
    verdict = study.summary["verdict"]
    assert verdict["benchmark"] == "buy_and_hold" and verdict["copies"]["policy_seed_3"] == "policy"  # one seed
    universe = pd.read_csv(tmp_path / "tracks" / "universe.csv")
    # every configuration the universe book traded is ranked, or is the benchmark, or a copy of one ranked
    assert {*verdict["strategies"], *verdict["copies"], "buy_and_hold"} == set(configurations(universe))
    assert {"policy", "proxy"} <= set(verdict["strategies"]) and "buy_and_hold" not in verdict["strategies"]
    assert verdict["block_bars"] == 24 and verdict["bars"] == len(universe)
    assert 0.0 <= verdict["spa"]["consistent"] <= 1.0 and verdict["mde"]["sharpe"] > 0.0
    pooled = study.summary["pooled_policy_minus_bh"]["joint"]  # the detectable edge is that interval's bootstrap
    assert (verdict["mde"]["observed"], verdict["mde"]["p_value"]) == (pooled["mean"], pooled["p_value"])
    assert "## Verdict: the whole search against buy-and-hold" in study.report
    assert study.metrics[verdict_metric("spa_p")] == verdict["spa"]["consistent"] == study.spa_p
    assert study.metrics[verdict_metric("stepm_size")] == len(verdict["spa"]["stepm"])
    assert study.tags["verdict.mcs"] == ",".join(verdict["mcs"]["included"])
    assert "tracks/universe.csv" in study.artifacts and (tmp_path / "tracks" / "universe.csv").exists()


def test_no_fold_leaks_its_test_period(appended: dict[str, Any], raws, tmp_path: Path) -> None:
    """Every bar from the fold's test start on is replaced by another random walk: no weight, threshold or baseline
    choice of the fold changes (its test results do)."""
    cfg, (first, _) = appended["cfg"], appended["folds"]
    rng = np.random.default_rng(0)
    changed = {}
    for symbol, raw in raws.items():
        bars = raw.bars.copy()
        after = bars["open_time"] >= pd.Timestamp(first.test[0])
        factor = np.exp(np.cumsum(rng.normal(0.0, 0.01, after.sum())))
        for col in ("open", "high", "low", "close"):
            bars.loc[after, col] = bars.loc[after, col] * factor
        bars.loc[after, "volume"] = bars.loc[after, "volume"] * rng.uniform(0.5, 2.0, after.sum())
        changed[symbol] = dataclasses.replace(raw, bars=bars)
    (leaked,) = run_plan(cfg, changed, tmp_path, [first])
    original = appended["alone"]
    for kind in ("policy", "proxy"):
        for name in ("best", "final"):
            a = checkpoint_path(appended["out"] / first.name / "models" / "pooled" / kind, 3, name)
            assert_same_weights(a, checkpoint_path(tmp_path / first.name / "models" / "pooled" / kind, 3, name))
    for symbol in raws:
        assert leaked.entries[symbol].tuned == original.entries[symbol].tuned  # thresholds, momentum
        assert not leaked.returns[symbol]["buy_and_hold"].equals(original.returns[symbol]["buy_and_hold"])


def test_pooled_training_on_one_asset_is_per_asset_training(raws, tmp_path: Path) -> None:
    first = plan_folds(tiny().folds, tiny().split)[0]
    pooled = tiny(**{"data.symbols": ["ETHUSDT"]})
    per_asset = tiny(**{"data.symbols": ["ETHUSDT"], "train.universe": "per_asset"})
    (a,) = run_plan(pooled, raws, tmp_path / "pooled", [first])
    (b,) = run_plan(per_asset, raws, tmp_path / "per_asset", [first])
    for kind in ("policy", "proxy"):
        assert_same_weights(
            checkpoint_path(tmp_path / "pooled" / first.name / "models" / "pooled" / kind, 3, "best"),
            checkpoint_path(tmp_path / "per_asset" / first.name / "models" / "ETHUSDT" / kind, 3, "best"),
        )
    assert a.entries == b.entries
    pd.testing.assert_frame_equal(a.returns["ETHUSDT"], b.returns["ETHUSDT"])


def test_a_fold_no_asset_has_data_for_is_refused(raws) -> None:
    cfg = tiny(**{"folds.first_test": "2024-05-01", "folds.last_test_end": "2024-08-01"})
    t = tables(cfg, raws)  # the bars end 2024-06-02
    last = plan_folds(cfg.folds, cfg.split)[-1]
    with pytest.raises(ConfigError, match=r"fold 2024-07-01 .* no asset of data\.symbols has data for it"):
        fold_data(last, t, cfg)


def test_an_asset_listed_after_a_fold_is_left_out_and_said_so(raws) -> None:
    cfg = tiny()
    late = dataclasses.replace(raws["ETHUSDT"], bars=raws["ETHUSDT"].bars.iloc[24 * 80 :].reset_index(drop=True))
    t = {"BTCUSDT": tables(cfg, raws)["BTCUSDT"], "ETHUSDT": asset_features(late, cfg).features}
    data = fold_data(plan_folds(cfg.folds, cfg.split)[0], t, cfg)
    assert list(data.assets) == ["BTCUSDT"]
    assert "ETHUSDT" in data.excluded and "fold 2024-04-01" in data.excluded["ETHUSDT"]


def test_a_damaged_fold_result_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / FOLD_JSON).write_text('{"name": "2024-04-01"}')
    with pytest.raises(DataError, match=r"fold\.json: not a fold result .* re-run the evaluate stage"):
        load_fold(tmp_path)


def test_paper_trading_a_folds_policy_books_what_the_fold_booked(appended: dict[str, Any], raws, tmp_path) -> None:
    """Each asset's policy of the newest fold (pooled seeds, the asset's val-chosen hysteresis), replayed bar by bar
    over the fold's test window from raw bars, books the fold's per-bar net return and commission."""
    cfg, fold_dir = appended["cfg"], appended["out"] / appended["folds"][1].name
    start, end = fold_test_window(fold_dir)
    for symbol, raw in raws.items():
        bundle, _ = fold_bundle(cfg, fold_dir, symbol)
        trader = PaperTrader(bundle, Ledger(f"sqlite:///{tmp_path / symbol}.db"), PaperSettings(cfg.sim))
        after = trader.start(str(fold_dir))
        source = ReplaySource(raw.bars, raw.funding)
        trader.run(replay_feed(source, bundle, cfg.sim.execution_lag_bars, start, end, after, 0.0))
        record = fold_record(fold_dir, symbol)
        worst = compare_with_record(trader.ledger.book(), record)
        # the trader encodes one window at a time, the fold batches them: positions agree to float32 (~1e-7)
        assert worst.keys() == {"net", "commission"} and max(worst.values()) < 1e-7, (symbol, worst)
        assert (record["commission"] > 0).sum() > 2, symbol  # the policy traded: hysteresis and costs are exercised
    with pytest.raises(DataError, match=r"no asset 'SOLUSDT' in this fold; it traded \['BTCUSDT', 'ETHUSDT'\]"):
        fold_bundle(cfg, fold_dir, "SOLUSDT")


def test_the_split_s_files_read_back_whole_and_the_newest_fold_alone(raws, tmp_path: Path) -> None:
    cfg = tiny()
    written = cut_folds(cfg, tables(cfg, raws))
    write_folds(written, tmp_path)
    for a, b in zip(read_folds(tmp_path), written, strict=True):
        assert (a.fold, list(a.assets), a.excluded) == (b.fold, list(b.assets), b.excluded)
        assert [x.digest for x in a.assets.values()] == [x.digest for x in b.assets.values()]
    shutil.rmtree(tmp_path / written[0].fold.name)  # the newest fold is read without the others' files
    newest = read_newest_fold(tmp_path)
    assert newest.fold == written[-1].fold and newest.assets["ETHUSDT"].digest == written[-1].assets["ETHUSDT"].digest
    assert newest_cut(tmp_path, "BTCUSDT") == tmp_path / written[-1].fold.name / "BTCUSDT"
    (tmp_path / "plan.json").write_text("[]")
    with pytest.raises(DataError, match=r"plan\.json: not a fold plan"):
        read_newest_fold(tmp_path)
