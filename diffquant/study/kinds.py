"""What a study's ``model.kind`` changes, behind one interface that the single-asset policy and the portfolio both
implement. ``study_kind(cfg)`` chooses it once; the study's models (``fold_models``), the fold runner (``fold_run``)
and the evaluate stage ask it, never ``model.kind``:

- the model groups of a fold (which assets each trains on) and the config each group trains with;
- what a group trains: the policy, and beside a single-asset policy the MSE proxy when ``baselines.proxy``;
- what a fold chooses on val and how threshold-opt hands it on: each asset's thresholds (``asset_run``), or the
  portfolio's book choices (``book_run.choose_book``);
- how a fold is judged on test: each asset's books, or the portfolio's one book beside its baselines
  (``book_run.trade_book``);
- how the study judges the folds' stitched tracks (``study_outputs``).

Below the study, each layer picks its own part by the network it holds: ``model.portfolio.make_policy`` builds the
network, ``train.policy_training.training_episodes`` cuts its episodes, ``deploy.fold_model`` builds the bundle a
fold's entry describes.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from diffquant.compute.units import Kind
from diffquant.config import Config
from diffquant.errors import DataError
from diffquant.evaluate.entries import PORTFOLIO, BookChoices, FoldEntry
from diffquant.evaluate.scoring import Scorer
from diffquant.evaluate.tuned import TunedThresholds
from diffquant.io import read_json
from diffquant.study.asset_run import Models, choose_on_val, judge_test
from diffquant.study.book_run import Singles, choose_book, single_config, trade_book, write_weights
from diffquant.study.fold_data import FoldData
from diffquant.study.fold_result import FoldResult
from diffquant.study.study_outputs import JudgedStudy, judge_asset_study, judge_book_study

log = logging.getLogger(__name__)

Choices = dict[str, TunedThresholds | BookChoices]  # asset -> its choices on val; a portfolio: its book's
Groups = dict[str, list[str]]  # model group -> the assets it trains on
Judged = tuple[dict[str, FoldEntry], dict[str, pd.DataFrame]]  # entry name -> its entry; -> its per-bar returns


@dataclass(frozen=True)
class StudyKind(ABC):
    """A study of one ``model.kind``, with the config it runs. ``models`` below: each group's trained seeds at
    ``eval.checkpoint`` (``fold_models.load_models``), by group name."""

    cfg: Config

    def single_groups(self, assets: list[str]) -> Groups:
        """The single-asset policies' groups: one over every asset (``train.universe: pooled``) or one per asset."""
        return {"pooled": assets} if self.cfg.train.universe == "pooled" else {a: [a] for a in assets}

    @abstractmethod
    def model_groups(self, assets: list[str]) -> Groups:
        """Which assets each model group of a fold trains on."""

    def group_config(self, group: str) -> Config:
        """The config a model group trains with."""
        return self.cfg

    @abstractmethod
    def trains(self) -> list[Kind]:
        """The models a group of this kind trains (``policy``, ``proxy``)."""

    @abstractmethod
    def choose(self, data: FoldData, groups: Groups, models: dict[str, Models]) -> Choices:
        """threshold-opt of one fold: everything chosen on its val window."""

    @abstractmethod
    def read_choices(self, folder: Path, data: FoldData) -> Choices:
        """What ``fold_run.write_choices`` wrote for the fold ``data``, checked against the params it is traded with."""

    @abstractmethod
    def judge(self, data: FoldData, groups: Groups, models: dict[str, Models], choices: Choices, out: Path) -> Judged:
        """A fold's books on test with its choices on val (anything beside ``fold.json`` written to ``out``)."""

    @abstractmethod
    def judge_study(self, results: list[FoldResult], folds: list[Path], out: Path) -> JudgedStudy:
        """The study of ``results`` (the folds in test order, from the fold folders ``folds``), its files in ``out``."""


class SingleAsset(StudyKind):
    """Single-asset policies (``train.universe``: pooled or per asset), each asset judged on its own."""

    def model_groups(self, assets: list[str]) -> Groups:
        return self.single_groups(assets)

    def trains(self) -> list[Kind]:
        return ["policy", "proxy"] if self.cfg.baselines.proxy else ["policy"]

    def _scorer(self) -> Scorer:
        return Scorer(self.cfg.sim, self.cfg.data.timeframe_minutes, self.cfg.eval.days_per_year)

    def choose(self, data: FoldData, groups: Groups, models: dict[str, Models]) -> Choices:
        """Each asset's thresholds on its val window, with its group's models."""
        scorer = self._scorer()
        choices: Choices = {}
        for group, symbols in groups.items():
            cfg = self.group_config(group)
            choices |= {s: choose_on_val(cfg, scorer, data.assets[s], models[group]) for s in symbols}
        return choices

    def read_choices(self, folder: Path, data: FoldData) -> Choices:
        cfg, seeds = self.cfg, [str(s) for s in self.cfg.train.seeds]
        choices: Choices = {}
        for symbol in data.assets:
            path = folder / f"{symbol}.json"
            tuned = TunedThresholds.load(path)
            tuned.require(path, cfg.eval.checkpoint, list(self.trains()), seeds)
            choices[symbol] = tuned
        return choices

    def judge(self, data: FoldData, groups: Groups, models: dict[str, Models], choices: Choices, out: Path) -> Judged:
        """Each asset's books on test, with its group's models and its choices on val."""
        scorer = self._scorer()
        entries: dict[str, FoldEntry] = {}
        returns = {}
        for group, symbols in groups.items():
            for symbol in symbols:
                tuned = choices[symbol]
                if not isinstance(tuned, TunedThresholds):
                    raise DataError(f"fold {data.fold.name}: {symbol} has a portfolio's choices; re-run threshold-opt")
                cfg = self.group_config(group)
                entry, returns[symbol] = judge_test(cfg, scorer, data.assets[symbol], models[group], tuned)
                entries[symbol] = entry
                log.info(
                    "fold %s %s: policy ensemble Sharpe %+.3f | buy-and-hold %+.3f",
                    data.fold.name,
                    symbol,
                    entry.policy.ensemble.metrics["sharpe"],
                    entry.buy_and_hold["sharpe"],
                )
        return entries, returns

    def judge_study(self, results: list[FoldResult], folds: list[Path], out: Path) -> JudgedStudy:
        return judge_asset_study(self.cfg, results, out)


class Portfolio(StudyKind):
    """One book over the fold's assets, beside the single-asset policies of the same settings (its single-asset
    average baseline), grouped as a single-asset study groups them."""

    def model_groups(self, assets: list[str]) -> Groups:
        return {PORTFOLIO: assets, **self.single_groups(assets)}

    def group_config(self, group: str) -> Config:
        return self.cfg if group == PORTFOLIO else single_config(self.cfg)

    def trains(self) -> list[Kind]:
        return ["policy"]

    def choose(self, data: FoldData, groups: Groups, models: dict[str, Models]) -> Choices:
        return {PORTFOLIO: choose_book(self.cfg, data, *_book_models(groups, models))}

    def read_choices(self, folder: Path, data: FoldData) -> Choices:
        path = folder / f"{PORTFOLIO}.json"
        raw = read_json(path, "threshold-opt")
        try:
            return {PORTFOLIO: BookChoices.from_dict(raw)}
        except DataError as exc:
            raise DataError(f"{path}: not a portfolio's choices ({exc}); re-run threshold-opt") from None

    def judge(self, data: FoldData, groups: Groups, models: dict[str, Models], choices: Choices, out: Path) -> Judged:
        """The book (``book_run.trade_book``), its weights written to ``out``."""
        chosen = choices[PORTFOLIO]
        if not isinstance(chosen, BookChoices):
            raise DataError(f"fold {data.fold.name}: no portfolio's choices; re-run threshold-opt")
        entry, table, weights = trade_book(self.cfg, data, *_book_models(groups, models), chosen)
        write_weights(out, weights)
        return {PORTFOLIO: entry}, {PORTFOLIO: table}

    def judge_study(self, results: list[FoldResult], folds: list[Path], out: Path) -> JudgedStudy:
        return judge_book_study(self.cfg, results, folds, out)


def _book_models(groups: Groups, models: dict[str, Models]) -> tuple[dict, Singles]:
    """A portfolio fold's book seeds, and each asset's single-asset seeds (its single-asset-average baseline)."""
    singles: Singles = {}
    for group in [g for g in groups if g != PORTFOLIO]:
        singles.update({symbol: models[group]["policy"] for symbol in groups[group]})
    return models[PORTFOLIO]["policy"], singles


KINDS: dict[str, type[StudyKind]] = {"single": SingleAsset, "portfolio": Portfolio}


def study_kind(cfg: Config) -> StudyKind:
    """The study ``cfg.model.kind`` names, running ``cfg``."""
    return KINDS[cfg.model.kind](cfg)
