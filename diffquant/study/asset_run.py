"""One asset of a single-asset study's fold: its choices on val (threshold-opt) and its books on test (evaluate)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from diffquant.config import Config
from diffquant.evaluate.baselines import choose_momentum, funding_extreme_decisions, momentum_decisions
from diffquant.evaluate.book_baselines import vol_target_of
from diffquant.evaluate.entries import AssetEntry
from diffquant.evaluate.report import Judge, score_quarter, trials_tried
from diffquant.evaluate.scoring import Scorer
from diffquant.evaluate.threshold_search import search_config
from diffquant.evaluate.tuned import TunedThresholds
from diffquant.evaluate.walk_forward import DECISIONS_OF, Decisions, WalkForwardResult
from diffquant.model.forecaster import Forecaster
from diffquant.model.policy import PolicyNetwork
from diffquant.study.fold_data import AssetFold

Models = dict[str, dict[str, PolicyNetwork | Forecaster]]  # kind (policy, proxy) -> seed -> model at eval.checkpoint


def choose_on_val(cfg: Config, scorer: Scorer, asset: AssetFold, models: Models) -> TunedThresholds:
    """threshold-opt's choices for one asset: each model's hysteresis and the momentum lookback, on val only."""
    tuned: dict[str, dict[str, Any]] = {"policy": {}, "proxy": {}}
    for kind, by_seed in models.items():
        for seed, model in by_seed.items():
            decisions = DECISIONS_OF[kind](model, asset.val)
            tuned[kind][seed] = search_config(cfg, asset.val, decisions, scorer).tuned()
    momentum, _ = choose_momentum(asset.val, cfg.baselines.momentum_lookbacks, scorer)
    return TunedThresholds(cfg.eval.checkpoint, tuned["policy"], tuned["proxy"], momentum)


def rule_baselines(cfg: Config, scorer: Scorer, asset: AssetFold) -> dict[str, WalkForwardResult]:
    """The test window's rule baselines a skeptic asks for beside buy-and-hold, priced as the portfolio's are
    (``book_baselines.priced_with``): buy-and-hold scaled to the volatility target (the policy's, else
    ``baselines.vol_target``), and the funding-extremes rule (short at high funding, long at low, at the stamps)."""
    rule = funding_extreme_decisions(asset.test, cfg.baselines.funding_extreme, cfg.sim.funding_hours)
    return {
        "buy_and_hold_vt": scorer.constant(asset.test, 1.0, vol_target_of(cfg.sim, cfg.baselines))[0],
        "funding_extremes": scorer.plain.positions(asset.test, rule)[0],
    }


def judge_test(
    cfg: Config, scorer: Scorer, asset: AssetFold, models: Models, tuned: TunedThresholds
) -> tuple[AssetEntry, pd.DataFrame]:
    """evaluate's scoring of the test window: the entry of every book and the per-bar net returns."""
    bars_per_day = 24 * 60 // cfg.data.timeframe_minutes
    bars_per_year = bars_per_day * cfg.eval.days_per_year
    seeds = [str(s) for s in cfg.train.seeds]
    trials = trials_tried(tuned, list(models), seeds, cfg.thresholds.trials, cfg.eval.prior_trials, bars_per_year)
    judge = Judge(scorer, asset.test, bars_per_year, bars_per_day, cfg.seed, list(cfg.eval.cost_multipliers))
    decisions: dict[str, dict[str, Decisions]] = {
        k: {s: DECISIONS_OF[k](m, asset.test) for s, m in by_seed.items()} for k, by_seed in models.items()
    }
    records, quarter = score_quarter(judge, decisions, tuned, trials)
    groups = records.groups()
    books = {k: g.ensemble for k, g in groups.items()} | {
        "momentum": records.momentum,
        "buy_and_hold": records.buy_and_hold,
        **rule_baselines(cfg, scorer, asset),
    }
    returns = {"time": records.buy_and_hold.record["time"]}
    for book, result in books.items():  # each book's net return and its cost, for the stitched cost sweep
        returns[book] = result.record["net"]
        returns[f"{book}_cost"] = result.record["commission"]
    for kind, g in groups.items():
        returns.update({f"{kind}_seed_{s}": g.seeds[s].record["net"] for s in seeds})
    for n in cfg.baselines.momentum_lookbacks:  # every candidate: configurations the study tried (PBO)
        returns[f"momentum_{n}"] = scorer.positions(asset.test, momentum_decisions(asset.test, n))[0].record["net"]
    entry = AssetEntry.of(quarter, tuned, trials.summary(bars_per_year))
    return entry, pd.DataFrame({k: np.asarray(v) for k, v in returns.items()})
