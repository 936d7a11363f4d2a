"""The verdict over a whole study: did anything the search traded beat the benchmark beyond the luck of trying it all,
which strategies did, which are among the best, and how small an edge the study could have seen at all.

- **SPA** (Hansen 2005, with White's 2000 Reality Check): does any configuration beat the benchmark? Per-bar losses
  are negative net returns, so the loss differential is a configuration's net return minus the benchmark's, bar by
  bar, and the tests are about *mean* returns (see docs/walk_forward.md, "Verdict", for how that relates to Sharpe).
- **StepM** (Romano and Wolf 2005): which configurations beat it, family-wise error at 5%.
- **MCS** (Hansen, Lunde and Nason 2011): the 90% model confidence set of every configuration and the benchmark.
- **Minimum detectable edge** of the headline Sharpe difference, from the study's own joint block bootstrap
  (``pooled_stats.minimum_detectable_difference``), and the headline's **minimum track record length**
  (``stats.minimum_track_record``).

``arch`` does the bootstrap tests (``diffquant.study.across`` runs them over studies, with ``statsmodels``'
Benjamini-Hochberg). What arch lacks is written by hand: the detectable edge and MinTRL (beside the statistics they
extend), and the studentization: arch's SPA keeps a ``studentize`` flag but ranks raw mean differentials (arch 8.0
gives the same p-values either way), so :func:`superior_ability` divides each differential by its
stationary-bootstrap standard error first, which makes arch's statistic Hansen's. Input a test can not carry (one
column, a track shorter than two bootstrap blocks, NaN returns) is stated as ``{"not_computable": why}`` in place of
its numbers, never a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from arch.bootstrap import MCS, SPA, StationaryBootstrap, StepM

from diffquant.evaluate.metrics import sharpe
from diffquant.evaluate.stats import minimum_track_record
from diffquant.study.pooled_stats import minimum_detectable_difference, pooled_sharpe_draws

SPA_SIZE = 0.05  # SPA and StepM level (family-wise)
MCS_SIZE = 0.10  # the model confidence set holds the best with 90% confidence
POWER = 0.80  # the minimum detectable edge: detected this often at SPA_SIZE (one-sided)
TRL_CONFIDENCE = 0.95
REPS = 1000  # bootstrap replications of SPA, StepM and MCS
N_BOOT = 2000  # draws of the pooled Sharpe difference (the study's interval uses as many)
NOT_COMPUTABLE = "not_computable"


class NotComputable(ValueError):
    """The input can not carry a test; the reason goes into the verdict in place of its numbers."""


@dataclass(frozen=True)
class Paired:
    """The headline book and its benchmark as the study pools them: (T, A) per-bar net returns (NaN where an asset
    has no bar) and each bar's fold."""

    policy: np.ndarray
    benchmark: np.ndarray
    period: np.ndarray


@dataclass(frozen=True)
class Setting:
    """How the study resamples and annualises."""

    bars_per_year: float
    block: int  # mean block of the stationary bootstrap, in bars (the study's: one day)
    seed: int
    reps: int = REPS
    n_boot: int = N_BOOT


def check_returns(frame: pd.DataFrame, block: int) -> None:
    """Refuse, as not computable, a track shorter than two bootstrap blocks or one with NaN or infinite returns."""
    if len(frame) < 2 * block:
        raise NotComputable(f"the track has {len(frame)} bars, fewer than two bootstrap blocks of {block} bars")
    values = frame.to_numpy(dtype=float)
    counts = (~np.isfinite(values)).sum(axis=0)
    bad = {c: int(n) for c, n in zip(frame.columns, counts, strict=True) if n}
    if bad:
        listed = ", ".join(f"{c} ({n} bars)" for c, n in bad.items())
        raise NotComputable(f"NaN or infinite returns in {listed}: a traded configuration must have every bar")


def distinct(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """The columns with distinct returns (the first of each kept) and which were dropped as a copy of which (one seed's
    policy is its ensemble; a momentum lookback is the one val chose in every fold)."""
    kept: dict[str, np.ndarray] = {}
    copies: dict[str, str] = {}
    for name in frame.columns:
        values = frame[name].to_numpy(dtype=float)
        twin = next((k for k, v in kept.items() if np.array_equal(v, values)), None)
        if twin is None:
            kept[name] = values
        else:
            copies[name] = twin
    return frame[list(kept)], copies


def studentized(differentials: pd.DataFrame, block: int, reps: int, seed: int) -> pd.DataFrame:
    """Each differential divided by the stationary-bootstrap standard deviation of its mean times √T: with these,
    the largest mean is Hansen's studentized statistic. A column that never varies is refused by name."""
    values = differentials.to_numpy(dtype=float)
    means = StationaryBootstrap(block, values, seed=seed).apply(lambda x: x.mean(axis=0), reps=reps)
    scale = np.sqrt(len(values) * means.var(axis=0))
    flat = [c for c, s in zip(differentials.columns, scale, strict=True) if not s > 0]
    if flat:
        raise NotComputable(f"the difference to the benchmark never varies for {', '.join(flat)}")
    return differentials / scale


def superior_ability(strategies: pd.DataFrame, benchmark: pd.Series, setting: Setting) -> dict[str, Any]:
    """SPA p-values (consistent, lower, upper), White's Reality Check p-value and the StepM set of ``strategies``
    (per-bar net returns, one column each) against ``benchmark``; the loss differential is the return difference."""
    if strategies.shape[1] == 0:
        raise NotComputable("no strategy besides the benchmark to rank")
    differentials = strategies.sub(benchmark, axis=0)
    z = studentized(differentials, setting.block, setting.reps, setting.seed)
    zero = pd.Series(0.0, index=z.index)
    options = {"block_size": setting.block, "reps": setting.reps, "nested": True, "seed": setting.seed}
    stepm = StepM(zero, -z, size=SPA_SIZE, **options)
    stepm.compute()
    stepm.spa.compute()  # StepM leaves its SPA on the full set again: its p-values are the whole search's
    spa = stepm.spa.pvalues
    check = SPA(zero, -differentials, **options)  # White's Reality Check: raw differentials, every one recentred
    check.compute()
    best = z.mean().idxmax()  # the largest studentized mean difference: what SPA's statistic is
    return {
        "consistent": float(spa["consistent"]),
        "lower": float(spa["lower"]),
        "upper": float(spa["upper"]),
        "reality_check": float(check.pvalues["upper"]),
        "stepm": [str(s) for s in stepm.superior_models],
        "best": str(best),
        "best_mean_difference_bps": 1e4 * float(differentials[best].mean()),
    }


def confidence_set(frame: pd.DataFrame, setting: Setting, size: float = MCS_SIZE) -> dict[str, Any]:
    """The model confidence set of the columns of ``frame`` (per-bar net returns; loss = −return), range method."""
    if frame.shape[1] < 2:
        raise NotComputable(f"a confidence set needs two or more distinct strategies, the track has {frame.shape[1]}")
    mcs = MCS(-frame, size, reps=setting.reps, block_size=setting.block, method="R", seed=setting.seed)
    mcs.compute()
    pvalues = mcs.pvalues["Pvalue"]
    return {
        "size": size,
        "included": [str(c) for c in frame.columns if c in set(mcs.included)],
        "pvalues": {str(k): float(v) for k, v in pvalues.items()},
    }


def detectable_edge(paired: Paired, setting: Setting) -> dict[str, Any]:
    """The smallest Sharpe difference of the headline to its benchmark the study would see 80% of the time at a
    one-sided 5%, from the joint block bootstrap of the pooled difference, beside the difference observed."""
    bars, block = len(paired.period), setting.block
    if bars < 2 * block:
        raise NotComputable(f"the track has {bars} bars, fewer than two bootstrap blocks of {block} bars")
    try:
        pooled = pooled_sharpe_draws(
            paired.policy,
            paired.benchmark,
            paired.period,
            setting.bars_per_year,
            setting.block,
            setting.n_boot,
            setting.seed,
        )
    except ValueError as exc:
        raise NotComputable(str(exc)) from None
    return {
        "sharpe": minimum_detectable_difference(pooled.draws, SPA_SIZE, POWER),
        "observed": pooled.mean,
        "p_value": float(np.mean(pooled.draws <= 0.0)),
        "n_asset_periods": pooled.n_asset_periods,
        "power": POWER,
        "size": SPA_SIZE,
    }


def track_record(net: pd.Series, bars_per_year: float) -> dict[str, Any]:
    """The headline's minimum track record length (its Sharpe above 0 at 95%), in bars and years, beside its own."""
    values = net.to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise NotComputable(f"NaN or infinite returns in {net.name}")
    try:
        bars = minimum_track_record(values, TRL_CONFIDENCE)
    except ValueError as exc:  # fewer than 2 returns, or none that vary
        raise NotComputable(str(exc)) from None
    return {
        "sharpe": sharpe(values, math.sqrt(bars_per_year)),
        "bars": bars,
        "years": None if bars is None else bars / bars_per_year,
        "track_years": len(values) / bars_per_year,
        "confidence": TRL_CONFIDENCE,
    }


def _stated(part: Any, *args: Any) -> dict[str, Any]:
    """A part's numbers, or the reason it can not have any."""
    try:
        return part(*args)
    except NotComputable as why:
        return {NOT_COMPUTABLE: str(why)}


def search_tests(frame: pd.DataFrame, benchmark: str, setting: Setting) -> tuple[dict[str, Any], dict[str, Any]]:
    """SPA and StepM of every column of ``frame`` but ``benchmark`` against it, and the model confidence set of all
    of them; each stated not computable where the returns can not carry it."""
    try:
        check_returns(frame, setting.block)
    except NotComputable as why:
        return {NOT_COMPUTABLE: str(why)}, {NOT_COMPUTABLE: str(why)}
    spa = _stated(superior_ability, frame.drop(columns=benchmark), frame[benchmark], setting)
    return spa, _stated(confidence_set, frame, setting)


def study_verdict(
    returns: pd.DataFrame, benchmark: str, headline: str, paired: Paired, setting: Setting
) -> dict[str, Any]:
    """The verdict of one study: ``returns`` holds every configuration it traded (per-bar net returns, one column
    each, ``benchmark`` and ``headline`` among them); ``paired`` is the headline and its benchmark as it pools them."""
    missing = [c for c in (benchmark, headline) if c not in returns.columns]
    if missing:
        raise ValueError(f"the track has no column {', '.join(missing)}; it has {', '.join(returns.columns)}")
    unique, copies = distinct(returns)
    benchmark_kept, headline_kept = copies.get(benchmark, benchmark), copies.get(headline, headline)
    ranked = [c for c in unique.columns if c != benchmark_kept]
    out: dict[str, Any] = {
        "benchmark": benchmark,
        "headline": headline,
        "bars": len(returns),
        "block_bars": setting.block,
        "reps": setting.reps,
        "strategies": ranked,
        "copies": copies,
    }
    out["spa"], out["mcs"] = search_tests(unique, benchmark_kept, setting)
    out["mde"] = _stated(detectable_edge, paired, setting)
    out["mintrl"] = _stated(track_record, returns[headline], setting.bars_per_year)
    included = out["mcs"].get("included")
    out["in_mcs"] = {
        "headline": None if included is None else headline_kept in included,
        "benchmark": None if included is None else benchmark_kept in included,
    }
    return out


def spa_pvalue(verdict: dict[str, Any]) -> float | None:
    """The consistent SPA p-value, what the registry's ``max_spa_p`` gate reads (None: not computable)."""
    return verdict["spa"].get("consistent")
