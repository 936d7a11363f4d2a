"""The typed entries write exactly the JSON the nested dicts wrote: a fold's ``fold.json`` stays byte for byte what it
was, and a malformed file is refused by the key that does not fit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from diffquant.config import Hysteresis, SimConfig
from diffquant.errors import DataError
from diffquant.evaluate.baselines import momentum_decisions
from diffquant.evaluate.entries import (
    BASELINES,
    PORTFOLIO,
    SINGLE_AVERAGE,
    AssetEntry,
    BookChoices,
    PortfolioEntry,
    QuarterEntry,
    fold_entry,
)
from diffquant.evaluate.hysteresis import apply_hysteresis
from diffquant.evaluate.report import SEED_METRICS, Judge, score_quarter, trials_tried
from diffquant.evaluate.scoring import Scorer
from diffquant.evaluate.stats import distribution, significance
from diffquant.evaluate.tuned import MomentumChoice, TunedModel, TunedThresholds
from diffquant.evaluate.walk_forward import Decisions
from diffquant.io import write_json
from diffquant.study.fold_result import FOLD_JSON, FoldResult, load_fold
from tests.evaluate.test_walk_forward import make_series

BARS_PER_DAY = 48
BARS_PER_YEAR = BARS_PER_DAY * 365


# What evaluate/report.py and fold_run.judge_test built before the entries were typed (the nested dicts, key for
# key): the reference the typed entries must write exactly.
def reference_book(judge: Judge, executed: np.ndarray, decisions: Decisions | None, null: float) -> dict[str, Any]:
    result, metrics = judge.scorer.positions(judge.series, executed, decisions)
    benchmark_net = judge.benchmark[0].record["net"].to_numpy()
    net = result.record["net"].to_numpy()
    signif = significance(net, benchmark_net, judge.bars_per_year, judge.mean_block, judge.seed, null)
    costs = judge.scorer.cost_sweep(judge.series, executed, judge.cost_multipliers)
    return {"metrics": metrics, "significance": signif, "costs": costs}


def reference_group(
    judge: Judge, executed: dict[str, np.ndarray], decisions: dict[str, Decisions], null: float
) -> dict[str, Any]:
    seeds = {}
    for seed, ex in executed.items():
        entry = reference_book(judge, ex, decisions[seed], null)
        seeds[seed] = {**entry, "metrics": {k: entry["metrics"][k] for k in SEED_METRICS}}
    spread = {k: distribution([s["metrics"][k] for s in seeds.values()]) for k in ("sharpe", "total_return_pct")}
    break_even = [s["costs"]["break_even_bps"] for s in seeds.values() if s["costs"]["break_even_bps"] is not None]
    if break_even:
        spread["break_even_bps"] = distribution(break_even)
    ensemble = reference_book(judge, np.mean(list(executed.values()), axis=0), None, null)
    return {"seeds": seeds, "distribution": spread, "ensemble": ensemble}


def reference_quarter(judge: Judge, decisions: dict[str, dict[str, Decisions]], tuned, trials) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for kind, by_seed in decisions.items():
        executed = {s: apply_hysteresis(d.raw, tuned.kind(kind)[s].hysteresis) for s, d in by_seed.items()}
        entry[kind] = reference_group(judge, executed, by_seed, trials.null_sharpe[kind])
    lookback = tuned.momentum.lookback
    entry["momentum"] = reference_book(
        judge, momentum_decisions(judge.series, lookback), None, trials.null_sharpe["momentum"]
    )
    entry["buy_and_hold"] = judge.benchmark[1]
    entry["flat"] = judge.scorer.constant(judge.series, 0.0)[1]
    return entry


def tuned_model(h: Hysteresis, sharpes: list[float]) -> TunedModel:
    return TunedModel(h, "optuna", max(sharpes), 0.4, 12.0, len(sharpes), sharpes)


@pytest.fixture(scope="module")
def quarter() -> dict[str, Any]:
    """Two seeds of a policy and of a proxy (one proxy seed never trades: no break-even cost) on a random walk,
    judged through ``score_quarter``, beside the reference dicts of the same books."""
    series = make_series(900, 20, seed=7)
    scorer = Scorer(SimConfig(), 30, 365)
    judge = Judge(scorer, series, BARS_PER_YEAR, BARS_PER_DAY, 0, [0.0, 1.0, 2.0])
    rng = np.random.default_rng(3)
    raw = {s: np.tanh(np.cumsum(rng.normal(0.0, 0.3, len(series.close)))) for s in ("1", "2")}
    decisions = {
        "policy": {s: Decisions(raw=r, gate=np.full(len(r), np.nan)) for s, r in raw.items()},
        "proxy": {
            "1": Decisions(raw=-raw["1"], gate=np.full(len(raw["1"]), np.nan)),
            "2": Decisions(raw=np.zeros(len(raw["2"])), gate=np.full(len(raw["2"]), np.nan)),
        },
    }
    tuned = TunedThresholds(
        "best",
        {"1": tuned_model(Hysteresis(), [0.1, 0.5]), "2": tuned_model(Hysteresis(0.2, 0.3, 0.1, 0.05), [0.3, -0.2])},
        {"1": tuned_model(Hysteresis(0.05, 0.05, 0.02, 0.0), [1.0, 0.2]), "2": tuned_model(Hysteresis(), [0.0, 0.0])},
        MomentumChoice(8, 0.7, [0.7, -0.1]),
    )
    trials = trials_tried(tuned, ["policy", "proxy"], ["1", "2"], 1, 5, BARS_PER_YEAR)
    _, entry = score_quarter(judge, decisions, tuned, trials)
    return {
        "entry": entry,
        "reference": reference_quarter(judge, decisions, tuned, trials),
        "tuned": tuned,
        "trials": trials.summary(BARS_PER_YEAR),
    }


def text(obj: Any, tmp_path: Path, name: str = "x.json") -> str:
    """``obj`` as the stages write it (``io.write_json``)."""
    write_json(tmp_path / name, obj)
    return (tmp_path / name).read_text()


def test_a_quarter_s_entry_writes_what_the_nested_dicts_wrote(quarter, tmp_path) -> None:
    entry: QuarterEntry = quarter["entry"]
    assert text(entry.to_dict(), tmp_path, "a.json") == text(quarter["reference"], tmp_path, "b.json")
    assert entry.proxy is not None and entry.proxy.seeds["2"].costs.break_even_bps is None  # never traded
    assert list(entry.proxy.distribution) == ["sharpe", "total_return_pct", "break_even_bps"]
    assert QuarterEntry.from_dict(json.loads(text(entry.to_dict(), tmp_path))) == entry


def test_a_fold_s_asset_entry_writes_what_the_fold_wrote(quarter, tmp_path) -> None:
    """The fold's entry was the quarter's dict with ``tuned`` and ``trials`` added, in that order."""
    entry = AssetEntry.of(quarter["entry"], quarter["tuned"], quarter["trials"])
    before = {**quarter["reference"], "tuned": quarter["tuned"].to_dict(), "trials": quarter["trials"]}
    written = text(entry.to_dict(), tmp_path, "a.json")
    assert written == text(before, tmp_path, "b.json")
    back = fold_entry(json.loads(written))
    assert isinstance(back, AssetEntry) and back == entry and text(back.to_dict(), tmp_path, "c.json") == written
    assert back.policy.ensemble.metrics["sharpe"] == before["policy"]["ensemble"]["metrics"]["sharpe"]


def portfolio_entry() -> PortfolioEntry:
    metrics = {b: {"sharpe": 0.1 * i, "total_return_pct": -1.5 + i} for i, b in enumerate((PORTFOLIO, *BASELINES))}
    chosen = tuned_model(Hysteresis(0.15, 0.1, 0.05, 0.02), [0.2, 0.9, 0.4])
    return PortfolioEntry(
        ensemble=metrics[PORTFOLIO],
        seeds={"3": {"sharpe": 0.25, "total_return_pct": 1.0}, "4": {"sharpe": -0.5, "total_return_pct": -2.0}},
        baselines={b: metrics[b] for b in BASELINES},
        trials={f"{PORTFOLIO}_n": 6},
        tuned=BookChoices(
            {"3": chosen, "4": chosen}, {"BTCUSDT": {"3": chosen}, "ETHUSDT": {"3": tuned_model(Hysteresis(), [0.0])}}
        ),
        assets={"BTCUSDT": {"contribution_pct": 1.5, "turnover": 0.01, "mean_abs_weight": 0.4}},
    )


def test_a_portfolio_entry_writes_what_the_book_s_fold_wrote(tmp_path) -> None:
    entry = portfolio_entry()
    portfolio, singles = entry.tuned.portfolio, entry.tuned.singles
    before = {  # book_run.trade_book's dict
        PORTFOLIO: {"ensemble": {"metrics": entry.ensemble}, "seeds": entry.seeds},
        **{k: {"metrics": entry.baselines[k]} for k in BASELINES},
        "trials": entry.trials,
        "tuned": {
            PORTFOLIO: {s: t.to_dict() for s, t in portfolio.items()},
            SINGLE_AVERAGE: {a: {s: t.to_dict() for s, t in by.items()} for a, by in singles.items()},
        },
        "assets": entry.assets,
    }
    written = text(entry.to_dict(), tmp_path, "a.json")
    assert written == text(before, tmp_path, "b.json")
    back = fold_entry(json.loads(written))
    assert isinstance(back, PortfolioEntry) and back == entry
    assert list(back.baselines) == list(BASELINES) and back.baselines["carry"]["sharpe"] == pytest.approx(0.6)
    assert BookChoices.from_dict(json.loads(text(entry.tuned.to_dict(), tmp_path, "c.json"))) == entry.tuned


def test_a_malformed_entry_is_refused_by_its_key(quarter) -> None:
    good = AssetEntry.of(quarter["entry"], quarter["tuned"], quarter["trials"]).to_dict()
    missing = json.loads(json.dumps(good))
    del missing["policy"]["ensemble"]["significance"]
    with pytest.raises(DataError, match=r"key 'e\.policy\.ensemble\.significance' is missing"):
        AssetEntry.from_dict(missing, "e")
    extra = json.loads(json.dumps(good))
    extra["momentum"]["costs"]["surprise"] = 1.0
    with pytest.raises(DataError, match=r"key 'momentum\.costs\.surprise' is not part of this layout"):
        AssetEntry.from_dict(extra)
    not_object = json.loads(json.dumps(good))
    not_object["proxy"]["seeds"]["2"] = [1, 2]
    with pytest.raises(DataError, match=r"key 'proxy\.seeds\.2' is list, not an object"):
        AssetEntry.from_dict(not_object)
    bad_tuned = json.loads(json.dumps(good))
    del bad_tuned["tuned"]["policy"]["2"]["exit"]
    with pytest.raises(DataError, match=r"entry 'tuned\.policy\.2' is missing or malformed"):
        AssetEntry.from_dict(bad_tuned)
    book = portfolio_entry().to_dict()
    del book["tuned"][SINGLE_AVERAGE]["ETHUSDT"]["3"]["val_sharpe"]
    with pytest.raises(DataError, match=r"entry 'tuned\.single_average\.ETHUSDT\.3' is missing or malformed"):
        PortfolioEntry.from_dict(book)


def test_a_malformed_fold_json_is_refused_naming_the_file_and_the_key(quarter, tmp_path) -> None:
    entry = AssetEntry.of(quarter["entry"], quarter["tuned"], quarter["trials"])
    fold = {"test_start": "2024-04-01", "test_end": "2024-05-01"}
    models = {"pooled": "../../../train/pooled/0123abcd"}
    result = FoldResult("2024-04-01", "k", fold, {"pooled": ["BTCUSDT"]}, models, {"BTCUSDT": entry}, {}, {})
    raw = result.to_dict()
    assert list(raw) == ["name", "key", "fold", "groups", "models", "entries", "excluded"]
    assert FoldResult.from_dict(json.loads(json.dumps(raw)), {}) == result
    del raw["entries"]["BTCUSDT"]["buy_and_hold"]
    write_json(tmp_path / FOLD_JSON, raw)
    with pytest.raises(DataError, match=r"fold\.json: not a fold result \(key 'entries\.BTCUSDT\.buy_and_hold' is"):
        load_fold(tmp_path)
