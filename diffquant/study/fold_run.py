"""One walk-forward fold end to end: train on its train window, choose on its val window, trade its test window.

The same library calls as the one-asset chain (train, train-proxy, threshold-opt, evaluate), per fold:

1. models: ``train.universe: pooled`` trains one policy (and one MSE proxy) per seed on the samples of every asset;
   ``per_asset`` one per asset and seed. Each group trains into ``<fold>/models/<group>/{policy,proxy}/seed_<s>``
   and resumes from there after a kill. Every seed is a unit of the grid runner, and :func:`run_folds` trains the
   units of all the folds it runs as one grid, so ``train.workers`` processes share the whole study.
2. choices on val, per asset: each seed's hysteresis (threshold search), the momentum lookback.
3. the test window, per asset, through ``score_quarter``: every book with its metrics, PSR/DSR, bootstrap
   intervals and cost sweep. The book starts flat at the fold's first test bar (what the evaluate stage does for
   each quarter), so a fold's track depends on nothing but its own models and choices.

``fold.json`` records the result under a key that hashes the config, the code and the fold's data (train, val and
test, cut at the test end): a fold whose key is unchanged is not run again, so appending a fold or more data after
a fold's end runs only what is new.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffquant.compute.grid import run_grid, with_unit_threads
from diffquant.compute.reporting import HooksOf
from diffquant.compute.units import SeedHooks, Unit, Work
from diffquant.config import Config
from diffquant.data.splits import Samples
from diffquant.errors import DataError
from diffquant.evaluate.baselines import choose_momentum, momentum_decisions
from diffquant.evaluate.report import Judge, score_quarter, trials_tried
from diffquant.evaluate.scoring import Scorer
from diffquant.evaluate.threshold_search import search_config
from diffquant.evaluate.tuned import TunedThresholds
from diffquant.evaluate.walk_forward import DECISIONS_OF, Decisions
from diffquant.io import read_json, read_parquet, write_json, write_parquet
from diffquant.model.forecaster import Forecaster
from diffquant.model.policy import PolicyNetwork
from diffquant.study.book_run import BASELINES, PORTFOLIO, single_config, trade_book, write_weights
from diffquant.study.fold_data import AssetFold, FoldData
from diffquant.train import checkpoint
from diffquant.train.layout import checkpoint_path
from diffquant.train.policy_training import TrainingData, policy_works, prepare_policies
from diffquant.train.proxy_training import prepare_proxies, proxy_works
from diffquant.train.resume import code_hash

log = logging.getLogger(__name__)

FOLD_JSON = "fold.json"
PRODUCER = "walkforward/dvc.yaml:folds"
HooksFor = Callable[[str, str, str], SeedHooks]  # (fold, group, kind) -> hooks of that group's seeds
Models = dict[str, dict[str, PolicyNetwork | Forecaster]]  # kind -> seed -> the model at eval.checkpoint


@dataclass(frozen=True)
class FoldResult:
    """What a fold hands to the study: per asset the judged entry of every book and the per-bar returns."""

    name: str
    key: str
    fold: dict[str, str]
    groups: dict[str, list[str]]  # model group -> the assets it trained on
    entries: dict[str, dict[str, Any]]  # asset -> score_quarter's entry (+ "tuned": the val choices)
    excluded: dict[str, str]
    returns: dict[str, pd.DataFrame]  # asset -> time + one net-return column per book

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "returns"}


def kinds(cfg: Config) -> list[str]:
    """The models a group trains: the policy, and the MSE proxy when asked (a single-asset model's baseline)."""
    return ["policy", "proxy"] if cfg.baselines.proxy and cfg.model.kind == "single" else ["policy"]


def model_groups(cfg: Config, assets: list[str]) -> dict[str, list[str]]:
    """Which assets each model trains on: a single-asset policy per ``train.universe``; a portfolio holds them all,
    beside those single-asset policies (its single-asset-average baseline)."""
    singles = {"pooled": assets} if cfg.train.universe == "pooled" else {a: [a] for a in assets}
    return {PORTFOLIO: assets, **singles} if cfg.model.kind == "portfolio" else singles


def group_config(cfg: Config, group: str) -> Config:
    """The config a model group trains with: its own, or a portfolio's single-asset baseline's."""
    return single_config(cfg) if cfg.model.kind == "portfolio" and group != PORTFOLIO else cfg


def pooled_samples(parts: list[Samples]) -> Samples:
    """The samples of several assets as one set (asset after asset; the trainer's shuffling mixes them)."""
    if len(parts) == 1:
        return parts[0]
    cat = {f: np.concatenate([getattr(p, f) for p in parts]) for f in ("features", "close", "funding", "open_time")}
    return Samples(**cat, feature_names=parts[0].feature_names)


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


def fold_works(cfg: Config, data: FoldData, out: Path, hooks_for: HooksFor) -> tuple[list[Work], HooksOf]:
    """The training units of a fold: every seed's policy (and proxy) of each model group, into
    ``<out>/models/<group>/{policy,proxy}/seed_<s>``; and the hooks each unit reports to."""
    works: list[Work] = []
    hooks: dict[tuple[str, str], SeedHooks] = {}
    for group, symbols in model_groups(cfg, list(data.assets)).items():
        cfg_g = group_config(cfg, group)
        parts = [data.assets[a] for a in symbols]
        digest = hashlib.sha256("".join(a.model_digest for a in parts).encode()).hexdigest()[:16]
        name, folder = f"{data.fold.name}/{group}", out / "models" / group
        samples = pooled_samples([a.samples for a in parts])
        books = tuple(a.train_series for a in parts)  # a portfolio's episodes, or one asset's at a cadence
        train = TrainingData(samples, tuple(a.val for a in parts), digest, f"fold {name}", books)
        hooks[name, "policy"] = hooks_for(data.fold.name, group, "policy")
        prepare_policies(cfg_g, train, folder / "policy", hooks[name, "policy"])
        works += policy_works(cfg_g, train, folder / "policy", name)
        if "proxy" in kinds(cfg_g):
            series = [a.train_series for a in parts], [a.val for a in parts]
            proxies = proxy_works(cfg_g, *series, folder / "proxy", name)
            hooks[name, "proxy"] = hooks_for(data.fold.name, group, "proxy")
            prepare_proxies(proxies, folder / "proxy", hooks[name, "proxy"])
            works += proxies
    return works, lambda unit: hooks[unit.group, unit.kind]


def load_models(cfg: Config, data: FoldData, folder: Path) -> Models:
    """A model group's trained seeds at ``eval.checkpoint``: {kind: {seed: model}}."""
    names = next(iter(data.assets.values())).samples.feature_names
    expected = checkpoint.policy_spec(cfg.model, names, cfg.window.context)
    load = {"policy": checkpoint.load_policy, "proxy": checkpoint.load_forecaster}
    return {
        k: {str(s): load[k](checkpoint_path(folder / k, s, cfg.eval.checkpoint), expected) for s in cfg.train.seeds}
        for k in kinds(cfg)
    }


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
) -> tuple[dict[str, Any], pd.DataFrame]:
    """evaluate's scoring of the test window: the entry of every book and the per-bar net returns."""
    bars_per_day = 24 * 60 // cfg.data.timeframe_minutes
    bars_per_year = bars_per_day * cfg.eval.days_per_year
    seeds = [str(s) for s in cfg.train.seeds]
    trials = trials_tried(tuned, kinds(cfg), seeds, cfg.thresholds.trials, cfg.eval.prior_trials, bars_per_year)
    judge = Judge(scorer, asset.test, bars_per_year, bars_per_day, cfg.seed, list(cfg.eval.cost_multipliers))
    decisions: dict[str, dict[str, Decisions]] = {
        k: {s: DECISIONS_OF[k](m, asset.test) for s, m in by_seed.items()} for k, by_seed in models.items()
    }
    records, entry = score_quarter(judge, decisions, tuned, trials)
    books = {k: records[k]["ensemble"] for k in decisions} | {b: records[b] for b in ("momentum", "buy_and_hold")}
    returns = {"time": records["buy_and_hold"].record["time"]}
    for book, result in books.items():  # each book's net return and its cost, for the stitched cost sweep
        returns[book] = result.record["net"]
        returns[f"{book}_cost"] = result.record["commission"]
    for kind in decisions:
        returns.update({f"{kind}_seed_{s}": records[kind][s].record["net"] for s in seeds})
    for n in cfg.baselines.momentum_lookbacks:  # every candidate: configurations the study tried (PBO)
        returns[f"momentum_{n}"] = scorer.positions(asset.test, momentum_decisions(asset.test, n))[0].record["net"]
    entry["tuned"] = tuned.to_dict()
    entry["trials"] = trials.summary(bars_per_year)
    return entry, pd.DataFrame({k: np.asarray(v) for k, v in returns.items()})


def run_folds(cfg: Config, folds: list[tuple[FoldData, Path]], hooks_for: HooksFor) -> list[FoldResult]:
    """Each fold's result (``(data, folder)`` in, in that order): read from its ``fold.json`` when the key still
    matches; the others' units trained as one grid (every fold's seeds side by side on ``train.workers``), then
    each of those folds chosen on val, traded on test and written. ``train.threads`` is resolved here, the driver,
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
    works: list[Work] = []
    hooks: dict[Unit, SeedHooks] = {}
    for data, out, _ in todo:
        fold_units, hooks_of = fold_works(cfg, data, out, hooks_for)
        works += fold_units
        hooks.update({w.unit: hooks_of(w.unit) for w in fold_units})
    run_grid(works, hooks.__getitem__, cfg.train)
    for data, out, key in todo:
        results[data.fold.name] = judge_fold(cfg, data, out, key)
    return [results[data.fold.name] for data, _ in folds]


def run_fold(cfg: Config, data: FoldData, out: Path, hooks_for: HooksFor) -> FoldResult:
    """One fold's result (:func:`run_folds` of that fold alone)."""
    return run_folds(cfg, [(data, out)], hooks_for)[0]


def judge_fold(cfg: Config, data: FoldData, out: Path, key: str) -> FoldResult:
    """A trained fold's choices on val and books on test, per asset (a portfolio's: its one book,
    ``book_run.trade_book``); written to ``out`` (``fold.json`` last)."""
    groups = model_groups(cfg, list(data.assets))
    if cfg.model.kind == "portfolio":
        models = load_models(cfg, data, out / "models" / PORTFOLIO)["policy"]
        singles = {}
        for group in [g for g in groups if g != PORTFOLIO]:
            by_seed = load_models(group_config(cfg, group), data, out / "models" / group)["policy"]
            singles.update({symbol: by_seed for symbol in groups[group]})
        entry, table, weights = trade_book(cfg, data, models, singles)
        entries, returns = {PORTFOLIO: entry}, {PORTFOLIO: table}
        write_weights(out, weights)
    else:
        entries, returns = _judge_assets(cfg, data, out, groups)
    result = FoldResult(data.fold.name, key, data.fold.describe(), groups, entries, data.excluded, returns)
    for symbol, table in returns.items():
        write_parquet(table, out / "returns" / f"{symbol}.parquet")
    write_json(out / FOLD_JSON, result.to_dict())  # last: a fold without it is not done
    return result


def _judge_assets(
    cfg: Config, data: FoldData, out: Path, groups: dict[str, list[str]]
) -> tuple[dict[str, dict[str, Any]], dict[str, pd.DataFrame]]:
    """Each asset's choices on val and books on test, with its group's models."""
    scorer = Scorer(cfg.sim, cfg.data.timeframe_minutes, cfg.eval.days_per_year)
    entries, returns = {}, {}
    for group, members in groups.items():
        models = load_models(cfg, data, out / "models" / group)
        for symbol in members:
            asset = data.assets[symbol]
            tuned = choose_on_val(cfg, scorer, asset, models)
            entries[symbol], returns[symbol] = judge_test(cfg, scorer, asset, models, tuned)
            log.info(
                "fold %s %s: policy ensemble Sharpe %+.3f | buy-and-hold %+.3f",
                data.fold.name,
                symbol,
                entries[symbol]["policy"]["ensemble"]["metrics"]["sharpe"],
                entries[symbol]["buy_and_hold"]["sharpe"],
            )
    return entries, returns


def headline(result: FoldResult) -> dict[str, dict[str, float]]:
    """A fold's test Sharpe per entry (asset, or the portfolio) and book: what the folds stage's metrics keep."""
    out = {}
    for name, e in result.entries.items():
        if name == PORTFOLIO:
            out[name] = {PORTFOLIO: e[PORTFOLIO]["ensemble"]["metrics"]["sharpe"]}
            out[name] |= {b: e[b]["metrics"]["sharpe"] for b in BASELINES}
        else:
            out[name] = {
                "policy": e["policy"]["ensemble"]["metrics"]["sharpe"],
                "buy_and_hold": e["buy_and_hold"]["sharpe"],
            }
    return out


def load_fold(out: Path) -> FoldResult:
    """A finished fold's result; ``DataError`` naming the file when it is missing, unreadable or of another layout."""
    raw = read_json(out / FOLD_JSON, PRODUCER)
    try:
        returns = {s: read_parquet(out / "returns" / f"{s}.parquet", PRODUCER) for s in raw["entries"]}
        return FoldResult(**raw, returns=returns)
    except (KeyError, TypeError) as exc:
        raise DataError(f"{out / FOLD_JSON}: not a fold result ({exc}); re-run {PRODUCER}") from None


def _previous(out: Path) -> FoldResult | None:
    """The fold's earlier result, if there is a readable one (anything else is simply run again)."""
    if not (out / FOLD_JSON).exists():
        return None
    try:
        return load_fold(out)
    except DataError as exc:
        log.warning("%s; running the fold again", exc)
        return None
