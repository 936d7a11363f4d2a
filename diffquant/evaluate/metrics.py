"""The one metrics module: every reported number of a walk-forward record is defined here, once.

Departures from upstream (docs/upstream.md, "Metrics" and "Defects fixed" items 5, 8, 9), on purpose:

- Sharpe is annualised for a 24/7 market, sqrt(365 * bars_per_day); ``sharpe_252`` keeps upstream's 252 days for
  comparison with its published numbers;
- no epsilons in denominators: a ratio whose denominator is zero (no variation, no losing bar, no drawdown) is
  reported as 0.0, so an all-flat policy scores exactly 0 and nothing is NaN or huge;
- Sortino divides by the downside deviation sqrt(mean(min(net, 0)^2)) over all bars (target 0), the textbook
  definition; upstream used the std of the negative bars about their own mean;
- the drawdown's running peak starts at the initial capital (equity 1.0), and Calmar uses the annualised return;
- direction accuracy: a bar held long or short is right when it earned, gross > 0, for both sides (upstream counted
  a losing short as right, docs/upstream.md, "Defects fixed" item 5).

Metrics are floats only (JSON and MLflow friendly); :func:`period` gives the time range.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

MINUTES_PER_DAY = 1440
UPSTREAM_DAYS_PER_YEAR = 252


def annualization(timeframe_minutes: float, days_per_year: float = 365) -> float:
    """sqrt(periods per year) for bars of ``timeframe_minutes``: 30-minute bars, 365 days -> sqrt(17,520) = 132.4."""
    return math.sqrt(days_per_year * MINUTES_PER_DAY / timeframe_minutes)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0


def sharpe_along_last_axis(net: np.ndarray, ann: float) -> np.ndarray:
    """mean / population std of per-bar net returns along the last axis, times ``ann``; 0.0 where they do not vary.

    "Do not vary" allows for rounding: np.std of a constant non-zero array is ~1e-17, not 0. Vectorised so the
    bootstrap (one row per resample) uses this same definition.
    """
    mean, std = net.mean(axis=-1), net.std(axis=-1)
    varies = std > 1e-12 * np.abs(mean)
    return np.where(varies, ann * mean / np.where(varies, std, 1.0), 0.0)


def sharpe(net: np.ndarray, ann: float) -> float:
    """The annualised Sharpe of one series of per-bar net returns (see ``sharpe_along_last_axis``)."""
    return float(sharpe_along_last_axis(np.asarray(net, dtype=np.float64), ann))


def sortino(net: np.ndarray, ann: float) -> float:
    """mean / downside deviation sqrt(mean(min(net, 0)^2)) over all bars, times ``ann``; 0.0 without a losing bar."""
    downside = math.sqrt(float(np.mean(np.minimum(net, 0.0) ** 2)))
    return ann * _ratio(float(np.mean(net)), downside)


def underwater(equity: np.ndarray) -> np.ndarray:
    """Fall from the running peak per bar, as a fraction (>= 0); the peak starts at the initial capital 1.0."""
    peak = np.maximum.accumulate(np.r_[1.0, equity])[1:]
    return 1.0 - equity / peak


def max_drawdown(equity: np.ndarray) -> float:
    """Largest fall from a running peak, as a fraction."""
    return float(np.max(underwater(equity)))


def compute_metrics(
    record: pd.DataFrame, timeframe_minutes: float, days_per_year: float = 365, flat_threshold: float = 0.0
) -> dict[str, float]:
    """Metrics of a walk-forward ``record`` (columns of ``diffquant.evaluate.walk_forward.RECORD_COLUMNS``).

    A bar is long when position > ``flat_threshold``, short when position < -``flat_threshold``, flat otherwise
    (the default 0 counts only an exactly flat book as flat, which is what hysteresis and baselines produce; pass
    ``eval.exit`` to classify raw positions). Returns are annualised over the bars of the record (bars missing in
    gaps do not count). Accuracies are fractions of 0 .. 1 and are 0.0 when there is no such bar; ``long_bars`` /
    ``short_bars`` say how many there were. ``mean_gate`` is present only when the record has gate values
    (baselines have none).
    """
    if len(record) == 0:
        raise ValueError("empty walk-forward record: no bar to compute metrics on")
    net = record["net"].to_numpy(dtype=np.float64)
    gross = record["gross"].to_numpy(dtype=np.float64)
    position = record["position"].to_numpy(dtype=np.float64)
    trade = record["trade"].to_numpy(dtype=np.float64)
    equity = record["equity"].to_numpy(dtype=np.float64)
    n = len(net)
    ann = annualization(timeframe_minutes, days_per_year)

    years = n * timeframe_minutes / (MINUTES_PER_DAY * days_per_year)
    final = float(equity[-1])
    with np.errstate(over="ignore"):  # a few bars' return compounded to a year may overflow to inf
        annual = float(np.expm1(np.log(final) / years)) if final > 0 else -1.0
    drawdown = max_drawdown(equity)

    long = position > flat_threshold
    short = position < -flat_threshold
    active = long | short
    earned = gross > 0.0  # position x return > 0: right for a long and a short alike

    metrics = {
        "sharpe": sharpe(net, ann),
        "sharpe_252": sharpe(net, annualization(timeframe_minutes, UPSTREAM_DAYS_PER_YEAR)),
        "sortino": sortino(net, ann),
        "total_return_pct": (final - 1.0) * 100.0,
        "annual_return_pct": annual * 100.0,
        "max_drawdown_pct": drawdown * 100.0,
        "calmar": _ratio(annual, drawdown),
        "commission_pct": float(record["commission"].sum()) * 100.0,
        "funding_pct": float(record["funding"].sum()) * 100.0,  # negative = received
        "rebalances": float(np.count_nonzero(trade)),
        "long_share": float(np.mean(long)),
        "short_share": float(np.mean(short)),
        "flat_share": float(np.mean(~active)),
        "turnover": float(np.mean(np.abs(trade))),
        "exposure": float(np.mean(np.abs(position))),
        "long_accuracy": _ratio(float(np.sum(earned & long)), float(np.sum(long))),
        "short_accuracy": _ratio(float(np.sum(earned & short)), float(np.sum(short))),
        "direction_accuracy": _ratio(float(np.sum(earned & active)), float(np.sum(active))),
        "long_bars": float(np.sum(long)),
        "short_bars": float(np.sum(short)),
        "n_bars": float(n),
    }
    gate = record["gate"].to_numpy(dtype=np.float64)
    if np.isfinite(gate).any():
        metrics["mean_gate"] = float(np.nanmean(gate))
    return metrics


def period(record: pd.DataFrame) -> dict[str, str]:
    """ISO open times of the record's first and last bar (UTC)."""
    return {"first_bar": record["time"].iloc[0].isoformat(), "last_bar": record["time"].iloc[-1].isoformat()}
