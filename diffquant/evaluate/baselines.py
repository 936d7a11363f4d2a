"""Rule baselines of one asset: time-series momentum, with its lookback chosen on val the way the policy's thresholds
are, and the funding-extremes rule (the book's, ``book_baselines.funding_extremes``, on a book of one asset)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from diffquant.evaluate.book import BookSeries
from diffquant.evaluate.book_baselines import funding_extremes
from diffquant.evaluate.scoring import Scorer
from diffquant.evaluate.tuned import MomentumChoice
from diffquant.evaluate.walk_forward import SeriesLike


def momentum_decisions(series: SeriesLike, lookback: int) -> np.ndarray:
    """Executed decisions (N,) of the rule "hold the sign of the past ``lookback``-bar return": +1, -1 or 0 (no
    change). The decision at bar k uses closes k - lookback and k only; NaN where bar k - lookback does not exist.
    """
    close = np.asarray(series.close, dtype=np.float64)
    out = np.full(len(close), np.nan)
    out[lookback:] = np.sign(close[lookback:] - close[:-lookback])
    return out


def choose_momentum(val: SeriesLike, lookbacks: list[int], scorer: Scorer) -> tuple[MomentumChoice, pd.DataFrame]:
    """The lookback with the highest val Sharpe (the shortest on ties) and the table of every candidate."""
    rows = []
    for n in lookbacks:
        _, m = scorer.positions(val, momentum_decisions(val, n))
        rows.append(
            {
                "lookback": n,
                "sharpe": m["sharpe"],
                "total_return_pct": m["total_return_pct"],
                "rebalances": m["rebalances"],
            }
        )
    table = pd.DataFrame(rows).sort_values("lookback", kind="stable").reset_index(drop=True)
    best = table.loc[table["sharpe"].idxmax()]
    choice = MomentumChoice(int(best["lookback"]), float(best["sharpe"]), [float(v) for v in table["sharpe"]])
    return choice, table


def funding_extreme_decisions(series: SeriesLike, threshold: float, hours: int) -> np.ndarray:
    """Executed decisions (N,) of the funding-extremes rule on one asset: -1 from a funding stamp at which the
    funding paid over the last ``hours`` is at or above ``threshold``, +1 at or below -``threshold``, 0 otherwise,
    held to the next stamp; flat before the first stamp it can decide at."""
    return funding_extremes(BookSeries.of([series]), threshold, 1.0, hours)[:, 0]
