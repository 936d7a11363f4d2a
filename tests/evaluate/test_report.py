"""The seed group: per-seed books, their spread, the ensemble book, and the DSR's null Sharpe from real trials."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffquant.config import Hysteresis, SimConfig
from diffquant.evaluate.baselines import momentum_decisions
from diffquant.evaluate.report import Judge, group
from diffquant.evaluate.scoring import Scorer
from diffquant.evaluate.stats import expected_max_sharpe, null_max_sharpe
from diffquant.evaluate.tuned import MomentumChoice, TunedModel, TunedThresholds
from diffquant.evaluate.walk_forward import Decisions
from tests.evaluate.test_walk_forward import make_series

BARS_PER_YEAR = 48 * 365


def test_null_sharpe_uses_the_spread_of_the_trials_in_per_bar_units() -> None:
    trials = np.array([-1.0, 0.5, 2.0, 3.5, np.nan])  # annual Sharpes; a NaN trial (no variance) is left out
    got = null_max_sharpe(trials, 100, BARS_PER_YEAR)
    assert got == pytest.approx(expected_max_sharpe(100, np.var(trials[:4], ddof=1) / BARS_PER_YEAR))
    assert got * math.sqrt(BARS_PER_YEAR) == pytest.approx(np.std(trials[:4], ddof=1) * 2.5306, rel=1e-3)
    assert null_max_sharpe(trials, 1, BARS_PER_YEAR) == 0.0


def test_group_scores_each_seed_their_spread_and_the_ensemble_book() -> None:
    series = make_series(800, 20, seed=4)
    scorer = Scorer(SimConfig(), 30, 365)
    judge = Judge(scorer, series, BARS_PER_YEAR, 48, 0, [0.0, 1.0, 2.0])
    executed = {str(n): np.nan_to_num(momentum_decisions(series, n)) * 0.5 for n in (4, 8, 16)}
    decisions = {s: Decisions(raw=e, gate=np.full(len(e), np.nan)) for s, e in executed.items()}
    records, entry = group(judge, executed, decisions, null_sharpe=0.01)

    sharpes = [scorer.positions(series, executed[s])[1]["sharpe"] for s in executed]
    assert [entry.seeds[s].metrics["sharpe"] for s in executed] == pytest.approx(sharpes)
    assert entry.distribution["sharpe"]["median"] == pytest.approx(np.median(sharpes))
    assert entry.distribution["sharpe"]["min"] == pytest.approx(min(sharpes))
    mean_position = np.mean(list(executed.values()), axis=0)
    ensemble = scorer.positions(series, mean_position)[1]
    assert entry.ensemble.metrics["sharpe"] == pytest.approx(ensemble["sharpe"])
    # trades of opposite sign net out inside the ensemble: it pays less than the seeds' average
    assert ensemble["commission_pct"] < np.mean([entry.seeds[s].metrics["commission_pct"] for s in executed])
    assert records.ensemble.record["position"].to_numpy() == pytest.approx(mean_position[series.start - 2 : -2])
    sig = entry.ensemble.significance
    assert sig.dsr < sig.psr  # a positive null Sharpe can only lower the probability


def test_trials_counted_are_seeds_times_threshold_trials_plus_prior_ones() -> None:
    from diffquant.evaluate.report import trials_tried

    def model(trial_sharpes: list[float]) -> TunedModel:
        return TunedModel(Hysteresis(), "optuna", max(trial_sharpes), 0.0, 10.0, len(trial_sharpes), trial_sharpes)

    tuned = TunedThresholds(
        "best", {"1": model([0.0, 1.0, 2.0]), "2": model([3.0, -1.0, 0.5])}, {}, MomentumChoice(24, 0.5, [0.5, -0.5])
    )
    trials = trials_tried(tuned, ["policy"], ["1", "2"], 2, prior_trials=50, bars_per_year=BARS_PER_YEAR)
    assert trials.count == {"policy": 2 * (2 + 1) + 50, "momentum": 2}
    pooled = [0.0, 1.0, 2.0, 3.0, -1.0, 0.5]
    assert trials.null_sharpe["policy"] == pytest.approx(null_max_sharpe(np.array(pooled), 56, BARS_PER_YEAR))
    assert trials.summary(BARS_PER_YEAR)["policy_null_sharpe_annual"] == pytest.approx(
        trials.null_sharpe["policy"] * math.sqrt(BARS_PER_YEAR)
    )
