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

import logging
import os
from pathlib import Path

from diffquant.compute.grid import with_unit_threads
from diffquant.config import Config
from diffquant.errors import DataError
from diffquant.io import json_digest, write_json, write_parquet
from diffquant.study.asset_run import Models
from diffquant.study.fold_data import FoldData
from diffquant.study.fold_models import FolderOf, Group, HooksFor, fold_groups, load_models, train_groups
from diffquant.study.fold_result import FOLD_JSON, FoldResult, load_fold
from diffquant.study.kinds import Choices, study_kind
from diffquant.train.resume import code_hash

log = logging.getLogger(__name__)


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
    return json_digest(payload)


def choose_fold(cfg: Config, data: FoldData, folder_of: FolderOf) -> Choices:
    """threshold-opt of one fold: each asset's choices on its val window (a portfolio: its book's)."""
    groups = fold_groups(cfg, data)
    return study_kind(cfg).choose(data, _members(groups), _models(groups, folder_of))


def write_choices(folder: Path, choices: Choices) -> None:
    """A fold's choices as threshold-opt hands them to evaluate: ``<folder>/<asset or portfolio>.json``."""
    for name, choice in choices.items():
        write_json(folder / f"{name}.json", choice.to_dict())


def read_choices(folder: Path, data: FoldData, cfg: Config) -> Choices:
    """What :func:`write_choices` wrote for the fold ``data``, checked against the params it is traded with."""
    return study_kind(cfg).read_choices(folder, data)


def judge_fold(cfg: Config, data: FoldData, folder_of: FolderOf, choices: Choices, out: Path, key: str) -> FoldResult:
    """A trained fold's books on test with its choices on val, per asset (a portfolio's: its one book,
    ``book_run.trade_book``); written to ``out`` (``fold.json`` last)."""
    groups = fold_groups(cfg, data)
    entries, returns = study_kind(cfg).judge(data, _members(groups), _models(groups, folder_of), choices, out)
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


def _members(groups: list[Group]) -> dict[str, list[str]]:
    return {g.name: list(g.symbols) for g in groups}


def _models(groups: list[Group], folder_of: FolderOf) -> dict[str, Models]:
    """Each group's trained seeds at ``eval.checkpoint``, by group name."""
    return {g.name: load_models(g, folder_of) for g in groups}


def _previous(out: Path) -> FoldResult | None:
    """The fold's earlier result, if there is a readable one (anything else is simply run again)."""
    if not (out / FOLD_JSON).exists():
        return None
    try:
        return load_fold(out)
    except DataError as exc:
        log.warning("%s; running the fold again", exc)
        return None
