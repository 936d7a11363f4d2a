"""The study's evidence: stitched out-of-sample tracks, the universe book and the statistics pooled over them.

- An asset's *stitched track* is the concatenation of its folds' test tracks, in fold order (each fold's book
  starts flat, see ``fold_run``).
- The *universe book* holds every asset with equal weight: per bar, the mean of the net returns of the assets that
  have data in that bar (an asset left out of a fold is absent, never padded with zeros).
- Each track and book is judged like a quarter of the evaluate stage: metrics, PSR, DSR, stationary-bootstrap
  intervals of the Sharpe and of Sharpe minus buy-and-hold, the cost sweep. The DSR counts every configuration
  tried on val to arrive at the track (per fold and asset: seeds x (threshold trials + 1) per model kind), and the
  Sharpe spread of the configurations traded out of sample.
- The Probability of Backtest Overfitting (CSCV) over the configurations the study traded: every seed, both
  ensembles, every momentum lookback, buy-and-hold.
- The policy minus buy-and-hold pooled over asset-folds, with a bootstrap that resamples time blocks jointly across
  assets (and, to show what independence would claim, one that does not).
- The verdict over the whole search (``diffquant.study.verdict``): SPA, StepM and the model confidence set of every
  configuration against the benchmark, and the smallest edge the pooled bootstrap could see.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from diffquant.evaluate.metrics import max_drawdown, sharpe
from diffquant.evaluate.stats import null_max_sharpe, significance
from diffquant.study.fold_result import FoldResult
from diffquant.study.pbo import probability_of_backtest_overfitting
from diffquant.study.pooled_stats import pooled_sharpe_difference
from diffquant.study.verdict import N_BOOT, Paired, Setting, study_verdict

# the books every report line shows, when present: the models, momentum, buy-and-hold and the rule baselines
BOOKS = ("policy", "proxy", "momentum", "buy_and_hold", "buy_and_hold_vt", "funding_extremes")
UNIVERSE = "universe"


def stitch(results: list[FoldResult]) -> dict[str, pd.DataFrame]:
    """Asset -> its folds' per-bar returns concatenated in fold order, with the fold's name in ``fold``."""
    parts: dict[str, list[pd.DataFrame]] = {}
    for result in results:
        for symbol, table in result.returns.items():
            parts.setdefault(symbol, []).append(table.assign(fold=result.name))
    return {s: pd.concat(p, ignore_index=True) for s, p in parts.items()}


def universe_book(tracks: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Equal weight over the assets with data in each bar: the mean of their net returns, per book column."""
    columns = [c for c in next(iter(tracks.values())).columns if c not in ("time", "fold")]
    indexed = {s: t.set_index("time") for s, t in tracks.items()}
    book = pd.DataFrame({c: pd.concat({s: t[c] for s, t in indexed.items()}, axis=1).mean(axis=1) for c in columns})
    folds = pd.concat({s: t["fold"] for s, t in indexed.items()}, axis=1).bfill(axis=1).iloc[:, 0]
    assets = pd.concat({s: t["buy_and_hold"] for s, t in indexed.items()}, axis=1).notna().sum(axis=1)
    return book.assign(fold=folds, assets=assets).sort_index().reset_index()


def configurations(track: pd.DataFrame) -> list[str]:
    """The columns that are traded configurations (every one the study tried), not costs or labels."""
    return [c for c in track.columns if c not in ("time", "fold", "assets") and not c.endswith("_cost")]


def judge_track(
    track: pd.DataFrame,
    n_trials: dict[str, int],
    bars_per_year: float,
    mean_block: float,
    seed: int,
    costs: list[float],
    books: tuple[str, ...] = BOOKS,
    benchmark_book: str = "buy_and_hold",
) -> dict[str, Any]:
    """Every book of one track: metrics, PSR, DSR, intervals (the difference against ``benchmark_book``) and cost
    sweep; trial spread from all configurations."""
    ann = math.sqrt(bars_per_year)
    trial_sharpes = np.array([sharpe(track[c].to_numpy(), ann) for c in configurations(track)])
    benchmark = track[benchmark_book].to_numpy()
    out: dict[str, Any] = {"bars": len(track), "first_bar": str(track["time"].iloc[0]), "n_trials": n_trials}
    for book in [b for b in books if b in track.columns]:
        net = track[book].to_numpy()
        null = null_max_sharpe(trial_sharpes, n_trials.get(book, 1), bars_per_year) if book in n_trials else None
        entry = {
            "sharpe": sharpe(net, ann),
            "total_return_pct": 100.0 * (float(np.prod(1.0 + net)) - 1.0),
            "max_drawdown_pct": 100.0 * max_drawdown(np.cumprod(1.0 + net)),
            **significance(net, benchmark, bars_per_year, mean_block, seed, null),
        }
        if f"{book}_cost" in track.columns:
            cost = track[f"{book}_cost"].to_numpy()
            entry["costs"] = {f"{m:g}x": sharpe(net + (1.0 - m) * cost, ann) for m in costs}
        out[book] = entry
    return out


def trials_of(results: list[FoldResult], symbols: list[str]) -> dict[str, int]:
    """Configurations tried on val to arrive at a track over ``symbols``: summed over its folds and assets."""
    total: dict[str, int] = {}
    for result in results:
        for symbol in symbols:
            if symbol in result.entries:
                trials = result.entries[symbol].trials
                for key in [k for k in trials if k.endswith("_n")]:
                    total[key[:-2]] = total.get(key[:-2], 0) + int(trials[key])
    return total


def aligned(tracks: dict[str, pd.DataFrame], column: str) -> pd.DataFrame:
    """(time x asset) of one column, NaN where an asset has no bar."""
    return pd.concat({s: t.set_index("time")[column] for s, t in tracks.items()}, axis=1).sort_index()


def paired(tracks: dict[str, pd.DataFrame], book: str, benchmark: str) -> Paired:
    """``book`` and ``benchmark`` of every track as (bar x track) arrays, with each bar's fold: what is pooled."""
    folds = pd.concat({s: t.set_index("time")["fold"] for s, t in tracks.items()}, axis=1).sort_index()
    period = pd.factorize(folds.stack().groupby(level=0, sort=False).first())[0]  # each bar's first listed fold
    return Paired(aligned(tracks, book).to_numpy(), aligned(tracks, benchmark).to_numpy(), period)


def pooled_difference(
    tracks: dict[str, pd.DataFrame], bars_per_year: float, mean_block: float, seed: int, n_boot: int = N_BOOT
) -> dict[str, Any]:
    """Policy minus buy-and-hold Sharpe over asset-folds; joint (time blocks shared by all assets) and independent."""
    p = paired(tracks, "policy", "buy_and_hold")
    args = (p.policy, p.benchmark, p.period, bars_per_year, mean_block, n_boot, seed)
    return {
        "joint": pooled_sharpe_difference(*args, joint=True),
        "independent": pooled_sharpe_difference(*args, joint=False),
    }


def verdict_of(
    track: pd.DataFrame,
    pooled: dict[str, pd.DataFrame],
    headline: str,
    benchmark: str,
    bars_per_year: float,
    bars_per_day: int,
    seed: int,
) -> dict[str, Any]:
    """The verdict over every configuration ``track`` traded against ``benchmark``; the detectable edge of
    ``headline`` from the tracks it is pooled over (each asset's, or the book's own), one day of bars a block."""
    setting = Setting(bars_per_year, bars_per_day, seed)
    return study_verdict(
        track[configurations(track)], benchmark, headline, paired(pooled, headline, benchmark), setting
    )


def pbo(track: pd.DataFrame, max_blocks: int = 16) -> dict[str, Any]:
    """CSCV over every configuration of ``track``; blocks: the largest even number up to ``max_blocks`` that
    leaves each block at least a week of hourly bars."""
    n_blocks = max(2, min(max_blocks, len(track) // 168) // 2 * 2)
    columns = configurations(track)
    result = probability_of_backtest_overfitting(track[columns].to_numpy(), n_blocks)
    return {**result.to_dict(), "configurations": columns}


def fold_table(results: list[FoldResult]) -> pd.DataFrame:
    """One row per asset and fold: each book's test Sharpe and the policy minus buy-and-hold."""
    rows = []
    for result in results:
        for symbol, e in result.asset_entries().items():
            row = {"fold": result.name, "asset": symbol, "policy": e.policy.ensemble.metrics["sharpe"]}
            if e.proxy is not None:
                row["proxy"] = e.proxy.ensemble.metrics["sharpe"]
            row["momentum"] = e.momentum.metrics["sharpe"]
            row["buy_and_hold"] = e.buy_and_hold["sharpe"]
            row["policy_minus_bh"] = row["policy"] - row["buy_and_hold"]
            rows.append(row)
    return pd.DataFrame(rows)
