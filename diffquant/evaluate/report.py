"""Scoring books for the evaluate stage: metrics, significance and the cost sweep of each, and the seed group.

A *book* is one sequence of executed decisions traded through the one engine: a seed's policy after hysteresis,
the MSE proxy, the momentum rule, buy-and-hold. The seed *ensemble* trades the average of the seeds' executed
positions as one book (trades net out between seeds, so it is cheaper than five separate books).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from diffquant.evaluate.baselines import momentum_decisions
from diffquant.evaluate.entries import BookEntry, CostSweep, GroupEntry, QuarterEntry, Significance
from diffquant.evaluate.hysteresis import apply_hysteresis
from diffquant.evaluate.scoring import Scorer
from diffquant.evaluate.stats import distribution, null_max_sharpe, significance
from diffquant.evaluate.tuned import TunedThresholds
from diffquant.evaluate.walk_forward import Decisions, SeriesLike, WalkForwardResult

# the per-seed metrics kept in evaluate.json (the ensemble and the baselines keep them all)
SEED_METRICS = (
    "sharpe",
    "total_return_pct",
    "max_drawdown_pct",
    "rebalances",
    "turnover",
    "exposure",
    "long_share",
    "short_share",
    "flat_share",
    "commission_pct",
    "funding_pct",
)


@dataclass(frozen=True)
class Judge:
    """How every book of a quarter is judged: the scorer, its benchmark book and the statistics' settings."""

    scorer: Scorer
    series: SeriesLike
    bars_per_year: float
    mean_block: float  # stationary bootstrap mean block, at least a day of bars
    seed: int
    cost_multipliers: list[float]

    @cached_property
    def benchmark(self) -> tuple[WalkForwardResult, dict[str, float]]:
        """Buy-and-hold on the same bars: the book every Sharpe difference is taken against."""
        return self.scorer.constant(self.series, 1.0)

    def book(
        self, executed: np.ndarray, decisions: Decisions | None = None, null_sharpe: float | None = None
    ) -> tuple[WalkForwardResult, BookEntry]:
        """One book: its walk-forward record and its entry (metrics, significance, costs)."""
        result, metrics = self.scorer.positions(self.series, executed, decisions)
        benchmark_net = self.benchmark[0].record["net"].to_numpy()
        signif = significance(
            result.record["net"].to_numpy(), benchmark_net, self.bars_per_year, self.mean_block, self.seed, null_sharpe
        )
        costs = self.scorer.cost_sweep(self.series, executed, self.cost_multipliers)
        return result, BookEntry(metrics, Significance(**signif), CostSweep(**costs))


@dataclass(frozen=True)
class GroupRecords:
    """A seed group's walk-forward records: each seed's book and the ensemble's."""

    seeds: dict[str, WalkForwardResult]
    ensemble: WalkForwardResult

    def books(self) -> dict[str, WalkForwardResult]:
        """Every book of the group by name: each seed, then ``"ensemble"``."""
        return {**self.seeds, "ensemble": self.ensemble}


@dataclass(frozen=True)
class QuarterRecords:
    """The walk-forward records of a quarter's books (``QuarterEntry``'s, flat aside)."""

    policy: GroupRecords
    proxy: GroupRecords | None
    momentum: WalkForwardResult
    buy_and_hold: WalkForwardResult

    def groups(self) -> dict[str, GroupRecords]:
        """The seed groups traded: the policy's, and the proxy's when it was."""
        return {"policy": self.policy} | ({} if self.proxy is None else {"proxy": self.proxy})


def group(
    judge: Judge, executed: dict[str, np.ndarray], decisions: dict[str, Decisions], null_sharpe: float | None
) -> tuple[GroupRecords, GroupEntry]:
    """Every seed's book, the distribution of their metrics over seeds, and the ensemble book: their records and
    the group's entry (a seed's entry keeps ``SEED_METRICS`` only)."""
    records, seeds = {}, {}
    for seed, ex in executed.items():
        records[seed], entry = judge.book(ex, decisions[seed], null_sharpe)
        seeds[seed] = replace(entry, metrics={k: entry.metrics[k] for k in SEED_METRICS})
    spread = {k: distribution([s.metrics[k] for s in seeds.values()]) for k in ("sharpe", "total_return_pct")}
    break_even = [s.costs.break_even_bps for s in seeds.values() if s.costs.break_even_bps is not None]
    if break_even:  # a seed that never trades has none
        spread["break_even_bps"] = distribution(break_even)
    ensemble_record, ensemble = judge.book(np.mean(list(executed.values()), axis=0), None, null_sharpe)
    return GroupRecords(records, ensemble_record), GroupEntry(seeds, spread, ensemble)


@dataclass(frozen=True)
class Trials:
    """What the deflated Sharpe ratio deflates by, per kind of book (policy, proxy, momentum)."""

    count: dict[str, int]  # configurations tried to arrive at the reported book
    null_sharpe: dict[str, float]  # per bar: the best Sharpe that many skill-less trials are expected to show

    def summary(self, bars_per_year: float) -> dict[str, float]:
        return {
            **{f"{k}_n": n for k, n in self.count.items()},
            **{f"{k}_null_sharpe_annual": v * math.sqrt(bars_per_year) for k, v in self.null_sharpe.items()},
        }


def trials_tried(
    tuned: TunedThresholds,
    kinds: list[str],
    seeds: list[str],
    threshold_trials: int,
    prior_trials: int,
    bars_per_year: float,
) -> Trials:
    """Trials from threshold-opt's record: per model kind, seeds x (threshold trials + the configured thresholds) +
    ``prior_trials`` (HPO), with the spread of every threshold trial's val Sharpe; for momentum, its candidate
    lookbacks."""
    count = {k: len(seeds) * (threshold_trials + 1) + prior_trials for k in kinds}
    null = {
        k: null_max_sharpe(np.concatenate([tuned.kind(k)[s].trial_sharpes for s in seeds]), count[k], bars_per_year)
        for k in kinds
    }
    candidates = np.asarray(tuned.momentum.candidate_sharpes, dtype=float)
    count["momentum"] = len(candidates)
    null["momentum"] = null_max_sharpe(candidates, len(candidates), bars_per_year)
    return Trials(count, null)


def score_quarter(
    judge: Judge, decisions: dict[str, dict[str, Decisions]], tuned: TunedThresholds, trials: Trials
) -> tuple[QuarterRecords, QuarterEntry]:
    """Every book of one quarter: each kind's seeds (raw decisions through their tuned hysteresis) with their spread
    and ensemble, momentum (its tuned lookback), buy-and-hold and flat. Returns the records and the entry (a fold's
    ``fold.json`` keeps it per asset)."""
    records: dict[str, GroupRecords] = {}
    groups: dict[str, GroupEntry] = {}
    for kind, by_seed in decisions.items():
        executed = {s: apply_hysteresis(d.raw, tuned.kind(kind)[s].hysteresis) for s, d in by_seed.items()}
        records[kind], groups[kind] = group(judge, executed, by_seed, trials.null_sharpe[kind])
    momentum_record, momentum = judge.book(
        momentum_decisions(judge.series, tuned.momentum.lookback), None, trials.null_sharpe["momentum"]
    )
    hold_record, buy_and_hold = judge.benchmark
    flat = judge.scorer.constant(judge.series, 0.0)[1]
    quarter_records = QuarterRecords(records["policy"], records.get("proxy"), momentum_record, hold_record)
    return quarter_records, QuarterEntry(groups["policy"], groups.get("proxy"), momentum, buy_and_hold, flat)
