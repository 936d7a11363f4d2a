"""A walk-forward fold of the portfolio (``model.kind: portfolio``): one book over the fold's assets.

Training is the fold runner's (one model group, ``book``, holding every asset the fold covers; each seed a unit of
the grid). Here the trained seeds trade the fold's test window as one book, beside the book baselines through the
same engine: each seed at ``eval.hysteresis`` per asset (no threshold search for a book yet), their ensemble (the
mean of the seeds' executed weights, within the leverage since each is), 1/N, inverse volatility and cross-sectional
momentum (lookback window.context - 1 bars, what the policy sees). The test book starts flat at the fold's first
test slot, as a single asset's does. Nothing here reads the test window before the models are trained and chosen.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffquant.config import Config
from diffquant.data.contracts import read_parquet, write_parquet
from diffquant.evaluate.book import BookResult, BookSeries, book_decisions, executed_book, walk_forward_book
from diffquant.evaluate.book_baselines import cross_sectional_momentum, equal_weight, inverse_volatility
from diffquant.evaluate.metrics import compute_metrics
from diffquant.model.portfolio import PortfolioPolicy
from diffquant.study.fold_data import FoldData

log = logging.getLogger(__name__)

PORTFOLIO = "portfolio"  # the book's name: its group, its track and its entry in a fold's result
BASELINES = ("equal_weight", "inverse_vol", "xs_momentum")
BOOKS = (PORTFOLIO, *BASELINES)
BENCHMARK = "equal_weight"  # what the intervals of a difference are taken against (the others are in the report)
WEIGHTS = "weights.parquet"


def baseline_weights(cfg: Config, book: BookSeries) -> dict[str, np.ndarray]:
    """Each baseline's executed weights (N, A)."""
    lookback, leverage = cfg.window.context - 1, cfg.model.portfolio.leverage
    return {
        "equal_weight": equal_weight(book, leverage),
        "inverse_vol": inverse_volatility(book, lookback, leverage),
        "xs_momentum": cross_sectional_momentum(book, lookback, leverage),
    }


def trade_book(
    cfg: Config, data: FoldData, models: dict[str, PortfolioPolicy]
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """The test window traded: the fold's entry, its per-bar returns (one column per configuration, costs beside
    the books) and the ensemble's weights and per-asset net returns per bar."""
    symbols = list(data.assets)
    book = BookSeries.of([data.assets[s].test for s in symbols], symbols)
    leverage, minutes, days = cfg.model.portfolio.leverage, cfg.data.timeframe_minutes, cfg.eval.days_per_year
    executed = {}
    for seed, model in models.items():
        executed[seed] = executed_book(book_decisions(model, book), cfg.eval.hysteresis, leverage)
    weights = {PORTFOLIO: np.mean(list(executed.values()), axis=0), **baseline_weights(cfg, book)}
    results: dict[str, BookResult] = {
        k: walk_forward_book(book, w, cfg.sim, leverage=leverage) for k, w in weights.items()
    }
    seeds = {s: walk_forward_book(book, w, cfg.sim, leverage=leverage) for s, w in executed.items()}
    metrics = {k: compute_metrics(r.record, minutes, days) for k, r in results.items()}
    ensemble = results[PORTFOLIO]
    entry: dict[str, Any] = {
        PORTFOLIO: {
            "ensemble": {"metrics": metrics[PORTFOLIO]},
            "seeds": {s: compute_metrics(r.record, minutes, days) for s, r in seeds.items()},
        },
        **{k: {"metrics": metrics[k]} for k in BASELINES},
        "trials": {f"{PORTFOLIO}_n": len(models)},  # the configurations tried: one per seed (no threshold search)
        "assets": {
            s: {
                "contribution_pct": 100.0 * float(a["net"].sum()),
                "turnover": float(np.abs(a["trades"]).mean()),
                "mean_abs_weight": float(np.abs(a["weight"]).mean()),
            }
            for s, a in ensemble.assets.items()
        },
    }
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
        "fold %s: portfolio Sharpe %+.3f | 1/N %+.3f | inverse vol %+.3f | momentum %+.3f",
        data.fold.name,
        *(metrics[k]["sharpe"] for k in BOOKS),
    )
    return entry, pd.DataFrame({k: np.asarray(v) for k, v in returns.items()}), weights_table


def write_weights(out: Path, table: pd.DataFrame) -> None:
    write_parquet(table, out / WEIGHTS)


def stitched_weights(folds: list[Path]) -> pd.DataFrame:
    """The ensemble's weights, per-asset net returns and trades of every fold, end to end (assets a fold left out
    are NaN there)."""
    return pd.concat([read_parquet(f / WEIGHTS, "the folds stage") for f in folds], ignore_index=True)
