"""One walk-forward fold end to end: train on its train window, choose on its val window, trade its test window.

The chain's stages run these steps over every fold (train and train-proxy: ``fold_models.train_groups``;
threshold-opt: :func:`choose_fold`; evaluate: :func:`judge_fold`); :func:`run_folds` runs them in one process for the
callers that want a study's folds without the chain (the benchmark zoo, tests):

1. models: every seed of every model group (``fold_models``) is a unit of the grid runner.
2. choices on val, per asset: each seed's hysteresis (threshold search), the momentum lookback; a portfolio's book
   hysteresis per seed and its single-asset average's choices (``book_run.choose_book``).
3. the test window, per asset, through ``score_quarter``: every book with its metrics, PSR/DSR, bootstrap
   intervals and cost sweep; a portfolio's one book (``book_run.trade_book``). The book starts flat at the fold's
   first test bar, so a fold's track depends on nothing but its own models and choices.

``fold.json`` records the result and where each group's policy seeds are; :func:`run_folds` keys it by the config,
the code and the fold's data (train, val and test, cut at the test end): a fold whose key is unchanged is not run
again, so appending a fold or more data after a fold's end runs only what is new.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffquant.compute.grid import with_unit_threads
from diffquant.config import Config
from diffquant.errors import DataError
from diffquant.evaluate.baselines import choose_momentum, momentum_decisions
from diffquant.evaluate.entries import PORTFOLIO, AssetEntry, BookChoices, FoldEntry
from diffquant.evaluate.report import Judge, score_quarter, trials_tried
from diffquant.evaluate.scoring import Scorer
from diffquant.evaluate.threshold_search import search_config
from diffquant.evaluate.tuned import TunedThresholds
from diffquant.evaluate.walk_forward import DECISIONS_OF, Decisions
from diffquant.io import read_json, write_json, write_parquet
from diffquant.model.portfolio import PortfolioPolicy
from diffquant.study.book_run import Singles, choose_book, trade_book, write_weights
from diffquant.study.fold_data import AssetFold, FoldData
from diffquant.study.fold_models import FolderOf, Group, HooksFor, Models, fold_groups, kinds, load_models, train_groups
from diffquant.study.fold_result import FOLD_JSON, FoldResult, load_fold
from diffquant.train.resume import code_hash

log = logging.getLogger(__name__)

Choices = dict[str, TunedThresholds | BookChoices]  # asset -> its choices on val; a portfolio: its book's


def fold_key(cfg: Config, data: FoldData) -> str:
    """Everything a fold's result depends on; the ``folds:`` section only through the fold's own windows."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in ("folds", "optimize")}
    settings["train"] = cfg.train.identity()
    payload = {
        "config": settings,
        "fold": data.fold.describe(),
        "data": {s: a.digest for s, a in data.assets.items()},
        "code": code_hash(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def choose_on_val(cfg: Config, scorer: Scorer, asset: AssetFold, models: Models) -> TunedThresholds:
    """threshold-opt's choices for one asset: each model's hysteresis and the momentum lookback, on val only."""
    tuned: dict[str, dict[str, Any]] = {"policy": {}, "proxy": {}}
    for kind, by_seed in models.items():
        for seed, model in by_seed.items():
            decisions = DECISIONS_OF[kind](model, asset.val)
            tuned[kind][seed] = search_config(cfg, asset.val, decisions, scorer).tuned()
    momentum, _ = choose_momentum(asset.val, cfg.baselines.momentum_lookbacks, scorer)
    return TunedThresholds(cfg.eval.checkpoint, tuned["policy"], tuned["proxy"], momentum)


def judge_test(
    cfg: Config, scorer: Scorer, asset: AssetFold, models: Models, tuned: TunedThresholds
) -> tuple[AssetEntry, pd.DataFrame]:
    """evaluate's scoring of the test window: the entry of every book and the per-bar net returns."""
    bars_per_day = 24 * 60 // cfg.data.timeframe_minutes
    bars_per_year = bars_per_day * cfg.eval.days_per_year
    seeds = [str(s) for s in cfg.train.seeds]
    trials = trials_tried(tuned, kinds(cfg), seeds, cfg.thresholds.trials, cfg.eval.prior_trials, bars_per_year)
    judge = Judge(scorer, asset.test, bars_per_year, bars_per_day, cfg.seed, list(cfg.eval.cost_multipliers))
    decisions: dict[str, dict[str, Decisions]] = {
        k: {s: DECISIONS_OF[k](m, asset.test) for s, m in by_seed.items()} for k, by_seed in models.items()
    }
    records, quarter = score_quarter(judge, decisions, tuned, trials)
    groups = records.groups()
    books = {k: g.ensemble for k, g in groups.items()} | {
        "momentum": records.momentum,
        "buy_and_hold": records.buy_and_hold,
    }
    returns = {"time": records.buy_and_hold.record["time"]}
    for book, result in books.items():  # each book's net return and its cost, for the stitched cost sweep
        returns[book] = result.record["net"]
        returns[f"{book}_cost"] = result.record["commission"]
    for kind, g in groups.items():
        returns.update({f"{kind}_seed_{s}": g.seeds[s].record["net"] for s in seeds})
    for n in cfg.baselines.momentum_lookbacks:  # every candidate: configurations the study tried (PBO)
        returns[f"momentum_{n}"] = scorer.positions(asset.test, momentum_decisions(asset.test, n))[0].record["net"]
    entry = AssetEntry.of(quarter, tuned, trials.summary(bars_per_year))
    return entry, pd.DataFrame({k: np.asarray(v) for k, v in returns.items()})


def choose_fold(cfg: Config, data: FoldData, folder_of: FolderOf) -> Choices:
    """threshold-opt of one fold: each asset's choices on its val window (a portfolio: its book's)."""
    groups = fold_groups(cfg, data)
    if cfg.model.kind == "portfolio":
        return {PORTFOLIO: choose_book(cfg, data, *_book_models(groups, folder_of))}
    scorer = Scorer(cfg.sim, cfg.data.timeframe_minutes, cfg.eval.days_per_year)
    choices: Choices = {}
    for group in groups:
        models = load_models(group, folder_of)
        choices |= {s: choose_on_val(group.cfg, scorer, data.assets[s], models) for s in group.symbols}
    return choices


def write_choices(folder: Path, choices: Choices) -> None:
    """A fold's choices as threshold-opt hands them to evaluate: ``<folder>/<asset or portfolio>.json``."""
    for name, choice in choices.items():
        write_json(folder / f"{name}.json", choice.to_dict())


def read_choices(folder: Path, data: FoldData, cfg: Config) -> Choices:
    """What :func:`write_choices` wrote for the fold ``data``, checked against the params it is traded with."""
    if cfg.model.kind == "portfolio":
        path = folder / f"{PORTFOLIO}.json"
        raw = read_json(path, "threshold-opt")
        try:
            return {PORTFOLIO: BookChoices.from_dict(raw)}
        except DataError as exc:
            raise DataError(f"{path}: not a portfolio's choices ({exc}); re-run threshold-opt") from None
    seeds = [str(s) for s in cfg.train.seeds]
    choices: Choices = {}
    for symbol in data.assets:
        path = folder / f"{symbol}.json"
        choices[symbol] = TunedThresholds.load(path)
        choices[symbol].require(path, cfg.eval.checkpoint, kinds(cfg), seeds)
    return choices


def judge_fold(cfg: Config, data: FoldData, folder_of: FolderOf, choices: Choices, out: Path, key: str) -> FoldResult:
    """A trained fold's books on test with its choices on val, per asset (a portfolio's: its one book,
    ``book_run.trade_book``); written to ``out`` (``fold.json`` last)."""
    groups = fold_groups(cfg, data)
    if cfg.model.kind == "portfolio":
        entry, table, weights = trade_book(cfg, data, *_book_models(groups, folder_of), choices[PORTFOLIO])
        entries, returns = {PORTFOLIO: entry}, {PORTFOLIO: table}
        write_weights(out, weights)
    else:
        entries, returns = _judge_assets(cfg, data, groups, folder_of, choices)
    result = FoldResult(
        name=data.fold.name,
        key=key,
        fold=data.fold.describe(),
        groups={g.name: list(g.symbols) for g in groups},
        models={g.name: os.path.relpath(folder_of(g, "policy"), out) for g in groups},
        entries=entries,
        excluded=data.excluded,
        returns=returns,
    )
    for symbol, table in returns.items():
        write_parquet(table, out / "returns" / f"{symbol}.parquet")
    write_json(out / FOLD_JSON, result.to_dict())  # last: a fold without it is not done
    return result


def run_folds(cfg: Config, folds: list[tuple[FoldData, Path]], hooks_for: HooksFor) -> list[FoldResult]:
    """Each fold's result (``(data, folder)`` in, in that order), in one process: read from its ``fold.json`` when
    the key still matches; the others' units trained as one grid into ``<folder>/models/<group>/<kind>``, then each
    of those folds chosen on val, traded on test and written. ``train.threads`` is resolved here, the driver,
    before any key or unit exists."""
    cfg = with_unit_threads(cfg)
    results: dict[str, FoldResult] = {}
    todo = []
    for data, out in folds:
        key, done = fold_key(cfg, data), _previous(out)
        if done is not None and done.key == key:
            log.info("fold %s: up to date (key %s), not run again", data.fold.name, key)
            results[data.fold.name] = done
        else:
            todo.append((data, out, key))
    folders = {data.fold.name: out for data, out, _ in todo}

    def folder_of(group: Group, kind: str) -> Path:
        return folders[group.fold.fold.name] / "models" / group.name / kind

    train_groups(cfg, [data for data, _, _ in todo], folder_of, hooks_for)
    for data, out, key in todo:
        results[data.fold.name] = judge_fold(cfg, data, folder_of, choose_fold(cfg, data, folder_of), out, key)
    return [results[data.fold.name] for data, _ in folds]


def run_fold(cfg: Config, data: FoldData, out: Path, hooks_for: HooksFor) -> FoldResult:
    """One fold's result (:func:`run_folds` of that fold alone)."""
    return run_folds(cfg, [(data, out)], hooks_for)[0]


def _book_models(groups: list[Group], folder_of: FolderOf) -> tuple[dict[str, PortfolioPolicy], Singles]:
    """A portfolio fold's book seeds, and each asset's single-asset seeds (its single-asset-average baseline)."""
    (book,) = [g for g in groups if g.name == PORTFOLIO]
    singles: Singles = {}
    for group in [g for g in groups if g.name != PORTFOLIO]:
        by_seed = load_models(group, folder_of)["policy"]
        singles.update({symbol: by_seed for symbol in group.symbols})
    return load_models(book, folder_of)["policy"], singles


def _judge_assets(
    cfg: Config, data: FoldData, groups: list[Group], folder_of: FolderOf, choices: Choices
) -> tuple[dict[str, FoldEntry], dict[str, pd.DataFrame]]:
    """Each asset's books on test, with its group's models and its choices on val."""
    scorer = Scorer(cfg.sim, cfg.data.timeframe_minutes, cfg.eval.days_per_year)
    entries: dict[str, FoldEntry] = {}
    returns = {}
    for group in groups:
        models = load_models(group, folder_of)
        for symbol in group.symbols:
            tuned = choices[symbol]
            entry, returns[symbol] = judge_test(group.cfg, scorer, data.assets[symbol], models, tuned)
            entries[symbol] = entry
            log.info(
                "fold %s %s: policy ensemble Sharpe %+.3f | buy-and-hold %+.3f",
                data.fold.name,
                symbol,
                entry.policy.ensemble.metrics["sharpe"],
                entry.buy_and_hold["sharpe"],
            )
    return entries, returns


def _previous(out: Path) -> FoldResult | None:
    """The fold's earlier result, if there is a readable one (anything else is simply run again)."""
    if not (out / FOLD_JSON).exists():
        return None
    try:
        return load_fold(out)
    except DataError as exc:
        log.warning("%s; running the fold again", exc)
        return None
