"""A walk-forward fold of the portfolio (``model.kind: portfolio``): one book over the fold's assets.

Training is the fold runner's: one model group, ``portfolio``, holding every asset the fold covers, and beside it
the single-asset policy of the same settings (:func:`single_config`, grouped by ``train.universe``), each seed a unit
of the grid. Here the trained seeds trade the fold's test window as one book, beside the book baselines through the
same engine:

- the portfolio: each seed with its hysteresis tuned on the fold's val book (one set of thresholds for every asset,
  ``search_book``), and their ensemble (the mean of the seeds' executed weights, within the leverage since each is);
- 1/N, inverse volatility and cross-sectional momentum (lookback window.context - 1 bars, what the policy sees);
- the volatility-targeted 1/N, cross-sectional funding carry and the funding-extremes rule (``book_baselines``),
  each rule traded under ``book_baselines.priced_with`` (without the policy's band and target; the targeted 1/N
  with the target);
- the single-asset average: each asset's single-asset seed ensemble (its seeds' hysteresis tuned on that asset's
  val, as the single-asset study chooses) held at 1/A of the book; with costs linear in the weights, its return is
  the equal-weight average of the single-asset policies' returns.

The test book starts flat at the fold's first test slot, as a single asset's does. Nothing here reads the test
window before the models are trained and chosen.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from diffquant.config import Config
from diffquant.evaluate.book import BookResult, BookSeries, book_decisions, executed_book, walk_forward_book
from diffquant.evaluate.book_baselines import (
    cross_sectional_carry,
    cross_sectional_momentum,
    equal_weight,
    funding_extremes,
    inverse_volatility,
    priced_with,
)
from diffquant.evaluate.entries import BASELINES, BOOKS, PORTFOLIO, SINGLE_AVERAGE, BookChoices, PortfolioEntry
from diffquant.evaluate.hysteresis import apply_hysteresis
from diffquant.evaluate.metrics import compute_metrics
from diffquant.evaluate.scoring import Scorer
from diffquant.evaluate.threshold_search import search_book, search_config
from diffquant.evaluate.walk_forward import policy_decisions
from diffquant.io import read_parquet, write_parquet
from diffquant.model.band import band_width
from diffquant.model.policy import PolicyNetwork
from diffquant.model.portfolio import PortfolioPolicy
from diffquant.study.fold_data import FoldData

log = logging.getLogger(__name__)

BENCHMARK = "equal_weight"  # what the intervals of a difference are taken against (the others are in the report)
WEIGHTS = "weights.parquet"


Singles = dict[str, dict[str, PolicyNetwork]]  # asset -> seed -> its single-asset policy


def single_config(cfg: Config) -> Config:
    """The single-asset policy beside a portfolio: the same settings with ``model.kind: single`` and no MSE proxy.
    Its seeds are the single-asset study's (same resume identity), so either study reuses the other's trainings."""
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, kind="single"),
        baselines=dataclasses.replace(cfg.baselines, proxy=False),
    )


def choose_book(cfg: Config, data: FoldData, models: dict[str, PortfolioPolicy], singles: Singles) -> BookChoices:
    """Every choice a portfolio fold makes on its val window; nothing of its test window is read."""
    symbols = list(data.assets)
    val_book = BookSeries.of([data.assets[s].val for s in symbols], symbols)
    scorer = Scorer(cfg.sim, cfg.data.timeframe_minutes, cfg.eval.days_per_year)
    portfolio = {
        seed: search_book(cfg, val_book, book_decisions(model, val_book), scorer).tuned()
        for seed, model in models.items()
    }
    tuned_singles = {
        symbol: {
            seed: search_config(
                cfg, data.assets[symbol].val, policy_decisions(m, data.assets[symbol].val), scorer
            ).tuned()
            for seed, m in singles[symbol].items()
        }
        for symbol in symbols
    }
    return BookChoices(portfolio, tuned_singles)


def single_average_weights(
    cfg: Config, data: FoldData, singles: Singles, book: BookSeries, choices: BookChoices
) -> np.ndarray:
    """The single-asset policies at 1/A each (N, A), each seed with its thresholds chosen on its asset's val."""
    positions = []
    for symbol in book.symbols:
        asset = data.assets[symbol]
        executed = [
            apply_hysteresis(policy_decisions(model, asset.test).raw, choices.singles[symbol][seed].hysteresis)
            for seed, model in singles[symbol].items()
        ]
        positions.append(np.mean(executed, axis=0))
    scale = min(1.0, cfg.model.portfolio.leverage) / len(book.symbols)
    return book.per_slot(positions) * scale


def baseline_weights(cfg: Config, book: BookSeries) -> dict[str, np.ndarray]:
    """Each rule baseline's executed weights (N, A)."""
    lookback, leverage, hours = cfg.window.context - 1, cfg.model.portfolio.leverage, cfg.sim.funding_hours
    return {
        "equal_weight": equal_weight(book, leverage),
        "inverse_vol": inverse_volatility(book, lookback, leverage),
        "xs_momentum": cross_sectional_momentum(book, lookback, leverage),
        "equal_weight_vt": equal_weight(book, leverage),
        "carry": cross_sectional_carry(book, cfg.baselines.carry_assets, leverage, hours),
        "funding_extremes": funding_extremes(book, cfg.baselines.funding_extreme, leverage, hours),
    }


def trade_book(
    cfg: Config, data: FoldData, models: dict[str, PortfolioPolicy], singles: Singles, choices: BookChoices
) -> tuple[PortfolioEntry, pd.DataFrame, pd.DataFrame]:
    """The test window traded with the choices made on val: the fold's entry, its per-bar returns (one column per
    configuration, costs beside the books) and the ensemble's weights and per-asset net returns per bar."""
    symbols = list(data.assets)
    book = BookSeries.of([data.assets[s].test for s in symbols], symbols)
    leverage, minutes, days = cfg.model.portfolio.leverage, cfg.data.timeframe_minutes, cfg.eval.days_per_year
    executed = {
        seed: executed_book(book_decisions(model, book), choices.portfolio[seed].hysteresis, leverage)
        for seed, model in models.items()
    }
    bands = {seed: band_width(model) for seed, model in models.items()}
    singles_weights = single_average_weights(cfg, data, singles, book, choices)
    weights = {
        PORTFOLIO: np.mean(list(executed.values()), axis=0),
        **baseline_weights(cfg, book),
        SINGLE_AVERAGE: singles_weights,
    }
    learned = [b for b in bands.values() if b is not None]  # the ensemble trades its seeds' mean learned band
    own = {PORTFOLIO: float(np.mean(learned)) if learned else None}
    policies = (PORTFOLIO, SINGLE_AVERAGE)  # the rules trade their own targets (``priced_with``)
    results: dict[str, BookResult] = {
        k: walk_forward_book(
            book, w, cfg.sim if k in policies else priced_with(k, cfg.sim, cfg.baselines), None, leverage, own.get(k)
        )
        for k, w in weights.items()
    }
    seeds = {s: walk_forward_book(book, w, cfg.sim, None, leverage, bands[s]) for s, w in executed.items()}
    metrics = {k: compute_metrics(r.record, minutes, days) for k, r in results.items()}
    ensemble = results[PORTFOLIO]
    entry = PortfolioEntry(
        ensemble=metrics[PORTFOLIO],
        seeds={s: compute_metrics(r.record, minutes, days) for s, r in seeds.items()},
        baselines={k: metrics[k] for k in BASELINES},
        # the configurations tried on val to arrive at the portfolio: every threshold trial of every seed
        trials={f"{PORTFOLIO}_n": sum(t.trials for t in choices.portfolio.values())},
        tuned=choices,
        assets={
            s: {
                "contribution_pct": 100.0 * float(a["net"].sum()),
                "turnover": float(np.abs(a["trades"]).mean()),
                "mean_abs_weight": float(np.abs(a["weight"]).mean()),
            }
            for s, a in ensemble.assets.items()
        },
    )
    returns = {"time": ensemble.record["time"]}
    for k, r in results.items():
        returns[k] = r.record["net"]
        returns[f"{k}_cost"] = r.record["commission"]
    returns.update({f"{PORTFOLIO}_seed_{s}": r.record["net"] for s, r in seeds.items()})
    per_asset = {f"w_{s}": ensemble.record[f"w_{s}"] for s in symbols}
    per_asset.update({f"net_{s}": ensemble.assets[s]["net"] for s in symbols})
    per_asset.update({f"trade_{s}": ensemble.assets[s]["trades"] for s in symbols})
    weights_table = pd.DataFrame({"time": ensemble.record["time"], **per_asset})
    log.info(
        "fold %s: portfolio Sharpe %+.3f | 1/N %+.3f | inverse vol %+.3f | momentum %+.3f | single-asset average %+.3f"
        " | targeted 1/N %+.3f | carry %+.3f | funding extremes %+.3f",
        data.fold.name,
        *(metrics[k]["sharpe"] for k in BOOKS),
    )
    return entry, pd.DataFrame({k: np.asarray(v) for k, v in returns.items()}), weights_table


def write_weights(out: Path, table: pd.DataFrame) -> None:
    write_parquet(table, out / WEIGHTS)


def stitched_weights(folds: list[Path]) -> pd.DataFrame:
    """The ensemble's weights, per-asset net returns and trades of every fold, end to end (assets a fold left out
    are NaN there)."""
    return pd.concat([read_parquet(f / WEIGHTS, "the evaluate stage") for f in folds], ignore_index=True)
