"""Hysteresis thresholds tuned on the val quarter with Optuna (TPE), never on test or backtest.

The policy runs once; each trial only re-filters its raw decisions, so a trial costs milliseconds. (A portfolio's
search is this one, over one set of thresholds for every asset of its book, each asset filtered on its own.) The
search space follows the policy's output scale (entries between the 5th and 95th percentile of |raw|, exit and
min_delta as fractions of the smaller entry), so no trial is wasted on an impossible combination; trials that trade
less than ``min_rebalances`` times are infeasible (a constraint, not a pruned trial). The configured thresholds are
the first trial, so the result is never worse on val than the defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import optuna
import pandas as pd

from diffquant.config import Config, Hysteresis
from diffquant.evaluate.book import BookDecisions, BookSeries, executed_book, walk_forward_book
from diffquant.evaluate.metrics import compute_metrics
from diffquant.evaluate.scoring import Scorer
from diffquant.evaluate.tuned import TunedModel
from diffquant.evaluate.walk_forward import Decisions, SeriesLike

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    best: Hysteresis
    metrics: dict[str, float]  # val metrics of ``best``
    source: str  # "optuna" or "default" (no feasible trial)
    trials: pd.DataFrame  # one row per trial: number, thresholds, value, rebalances, feasible

    def tuned(self) -> TunedModel:
        """The record threshold-opt hands to evaluate."""
        m = self.metrics
        return TunedModel(
            self.best,
            self.source,
            m["sharpe"],
            m["total_return_pct"],
            m["rebalances"],
            len(self.trials),
            [float(v) for v in self.trials["sharpe"]],
        )


Score = Callable[[Hysteresis], dict[str, float]]  # thresholds -> the val metrics of the book they execute


def search_config(cfg: Config, series: SeriesLike, decisions: Decisions, scorer: Scorer) -> SearchResult:
    """:func:`search` with the params' settings: what threshold-opt and every walk-forward fold run."""
    return _search_with(cfg, lambda th: scorer.executed(series, decisions, th)[1], decisions.raw)


def search_book(cfg: Config, book: BookSeries, decisions: BookDecisions, scorer: Scorer) -> SearchResult:
    """:func:`search` for a portfolio seed on its val book: one set of thresholds, each asset's raw weights through
    it, the book capped to ``model.portfolio.leverage`` and priced by the one engine."""
    leverage = cfg.model.portfolio.leverage

    def score(th: Hysteresis) -> dict[str, float]:
        executed = executed_book(decisions, th, leverage)
        result = walk_forward_book(book, executed, scorer.sim, decisions.gate, leverage, decisions.band)
        return compute_metrics(result.record, scorer.timeframe_minutes, scorer.days_per_year)

    return _search_with(cfg, score, decisions.raw)


def _search_with(cfg: Config, score: Score, raw: np.ndarray) -> SearchResult:
    t = cfg.thresholds
    return search(score, raw, cfg.eval.hysteresis, t.trials, t.objective, cfg.train.select_min_rebalances, cfg.seed)


def _suggest(trial: optuna.Trial, lo: float, hi: float) -> Hysteresis:
    enter_long = trial.suggest_float("enter_long", lo, hi)
    enter_short = trial.suggest_float("enter_short", lo, hi)
    smaller = min(enter_long, enter_short)
    exit_ = trial.suggest_float("exit_fraction", 0.0, 0.95) * smaller
    min_delta = trial.suggest_float("min_delta_fraction", 0.01, 1.0) * smaller
    return Hysteresis(enter_long, enter_short, exit_, min_delta)


def search(
    score: Score,
    raw: np.ndarray,
    default: Hysteresis,
    trials: int,
    objective: str,
    min_rebalances: int,
    seed: int,
) -> SearchResult:
    """Maximise ``objective`` (a key of ``compute_metrics``) of ``score`` over the hysteresis thresholds; ``raw``
    (the decisions they filter, NaN where there is none) sets the search space."""
    magnitude = np.abs(raw[np.isfinite(raw)])
    lo, hi = (float(q) for q in np.quantile(magnitude, [0.05, 0.95]))
    hi = max(hi, lo + 1e-6)
    rows: list[dict[str, Any]] = []

    def evaluate(th: Hysteresis, number: int) -> tuple[float, float]:
        m = score(th)
        rows.append(
            {
                "number": number,
                **asdict(th),
                objective: m[objective],
                "sharpe": m["sharpe"],  # the DSR needs every trial's Sharpe, whatever the objective
                "rebalances": m["rebalances"],
                "feasible": m["rebalances"] >= min_rebalances,
                "metrics": m,
            }
        )
        return m[objective], m["rebalances"]

    def run(trial: optuna.Trial) -> float:
        value, rebalances = evaluate(_suggest(trial, lo, hi), trial.number + 1)
        trial.set_constraint("min_rebalances", min_rebalances - rebalances)  # feasible when <= 0
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(10, trials // 3)))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    evaluate(default, 0)  # the configured thresholds, outside the search space on purpose
    study.optimize(run, n_trials=trials)

    table = pd.DataFrame(rows)
    feasible = table[table["feasible"]]
    if feasible.empty:
        log.warning("no thresholds traded >= %d times on val; keeping the configured ones", min_rebalances)
        best_row, source = table.iloc[0], "default"
    else:
        best_row = feasible.loc[feasible[objective].idxmax()]
        source = "default" if best_row["number"] == 0 else "optuna"
    best = Hysteresis(**{f.name: float(best_row[f.name]) for f in fields(Hysteresis)})
    return SearchResult(best, best_row["metrics"], source, table.drop(columns="metrics"))
