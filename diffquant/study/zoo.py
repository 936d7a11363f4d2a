"""The backbone and loss benchmark: configurations studied on the same folds and judged together.

Phase one runs every backbone (and the series path of those that have one) with the hybrid loss; phase two runs the
best two of them with every other loss. "Best" is ranked on validation only: the median over asset-folds and seeds
of the val Sharpe of each seed's tuned hysteresis, never a test number. Every configuration is one study of the
chain's kind (``fold_run.run_folds``, then ``report.summarize``), so its universe book, interval and turnover
are what the evaluate stage would report for it. Across the study:

- **DSR** counts every configuration: the trials are the sum over all configurations of their own (seeds x
  (threshold trials + 1) per asset-fold), and the spread of Sharpe ratios is that of every policy track (seed
  ensemble and each seed) of every configuration on the universe book;
- **PBO**: CSCV over the configurations' universe books (the seed ensembles): how often the configuration that is
  best on half of the out-of-sample bars lands in the bottom half on the other half.
- **The verdict** (``diffquant.study.verdict``): SPA and StepM of the configurations' universe books against
  buy-and-hold, and their 90% model confidence set with buy-and-hold: "tcn vs dlinear" is answered by whether both
  are in it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffquant.compute.units import QuietHooks
from diffquant.config import SERIES_BACKBONES, BackboneName, Config
from diffquant.evaluate.compare import to_markdown
from diffquant.evaluate.metrics import sharpe
from diffquant.evaluate.stats import null_max_sharpe, probabilistic_sharpe_ratio
from diffquant.folds import plan_folds
from diffquant.io import write_json
from diffquant.study.fold_data import fold_data
from diffquant.study.fold_result import FoldResult
from diffquant.study.fold_run import run_folds
from diffquant.study.pooled import UNIVERSE, pbo
from diffquant.study.report import summarize
from diffquant.study.verdict import MCS_SIZE, NOT_COMPUTABLE, Setting, distinct, search_tests

LOSSES: dict[str, dict[str, Any]] = {  # a loss configuration: the dotted keys it sets
    "hybrid": {"loss.type": "hybrid"},
    "sharpe": {"loss.type": "sharpe"},
    "sortino": {"loss.type": "sortino"},
    "calmar": {"loss.type": "calmar"},
    "cdar": {"loss.type": "cdar"},
    "hybrid-regime": {"loss.type": "hybrid", "loss.regime_power": 1.0},
}


@dataclass(frozen=True)
class Entry:
    """One configuration of the study: a backbone (on its window or series path) trained with one loss."""

    backbone: str
    series: bool
    loss: str

    @property
    def name(self) -> str:
        """``tcn-series_hybrid``: a folder name and the table's label."""
        return f"{self.backbone}{'-series' if self.series else ''}_{self.loss}"

    def overrides(self) -> dict[str, Any]:
        return {"model.backbone": self.backbone, "model.series": self.series, **LOSSES[self.loss]}


def backbone_entries() -> list[Entry]:
    """Phase one: every backbone with the hybrid loss, then the series path of those that have one."""
    window = [Entry(b, False, "hybrid") for b in typing.get_args(BackboneName)]
    return window + [Entry(b, True, "hybrid") for b in SERIES_BACKBONES]


def loss_entries(best: list[Entry]) -> list[Entry]:
    """Phase two: each of the chosen backbones with every loss it has not been trained with yet."""
    return [Entry(e.backbone, e.series, loss) for e in best for loss in LOSSES if loss != e.loss]


class EpochClock(QuietHooks):
    """Seed hooks that add up the training seconds and epochs of the units they hear from (for s/epoch)."""

    def __init__(self) -> None:
        self.seconds, self.epochs = 0.0, 0

    def finished(self, seed: int, outcome: Any) -> None:
        self.seconds += outcome.seconds
        self.epochs += len(outcome.result.history) - outcome.result.resumed_from


@dataclass(frozen=True)
class Configuration:
    """A configuration's study: its pooled summary, universe-book track and what the table needs beside them."""

    entry: Entry
    phase: str
    summary: dict[str, Any]
    universe: pd.DataFrame  # the universe book, per bar (``report.summarize``'s first track)
    val_score: float
    turnover: float
    seconds_per_epoch: float | None  # None: no epoch was timed (every fold came from an earlier run)


def val_score(results: list[FoldResult]) -> float:
    """The ranking score of phase one: median over asset-folds and policy seeds of the tuned val Sharpe."""
    scores = [float(t.val_sharpe) for r in results for e in r.asset_entries().values() for t in e.tuned.policy.values()]
    return float(np.median(scores))


def turnover(results: list[FoldResult]) -> float:
    """Mean |change of the seed ensemble's executed position| per bar and asset, over every asset-fold's bars."""
    metrics = [e.policy.ensemble.metrics for r in results for e in r.asset_entries().values()]
    bars = np.array([m["n_bars"] for m in metrics])
    return float(np.dot([m["turnover"] for m in metrics], bars) / bars.sum())


def best_entries(configurations: list[Configuration], n: int = 2) -> list[Entry]:
    """The ``n`` configurations with the highest val score (ties: the earlier one)."""
    ranked = sorted(configurations, key=lambda c: -c.val_score)
    return [c.entry for c in ranked[:n]]


def judge_study(configurations: list[Configuration], cfg: Config) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The table (one row per configuration) and the study-wide numbers: DSR over all configurations, PBO."""
    bars_per_year = 24 * 60 // cfg.data.timeframe_minutes * cfg.eval.days_per_year
    ann = math.sqrt(bars_per_year)
    books = _aligned_books(configurations)
    n_trials = sum(int(c.summary["tracks"][UNIVERSE]["n_trials"].get("policy", 0)) for c in configurations)
    spread = [
        sharpe(c.universe[col].to_numpy(), ann)
        for c in configurations
        for col in c.universe.columns
        if col == "policy" or col.startswith("policy_seed_")
    ]
    null = null_max_sharpe(np.array(spread), n_trials, bars_per_year)
    rows = []
    for c in configurations:
        u = c.summary["tracks"][UNIVERSE]["policy"]
        rows.append(
            {
                "configuration": c.entry.name,
                "phase": c.phase,
                "val_score": c.val_score,
                "sharpe": u["sharpe"],
                "ci_low": u["sharpe_ci_low"],
                "ci_high": u["sharpe_ci_high"],
                "dsr_study": _dsr(c.universe["policy"].to_numpy(), null),
                "dsr_own": u["dsr"],
                "return_pct": u["total_return_pct"],
                "max_dd_pct": u["max_drawdown_pct"],
                "turnover": c.turnover,
                "s_per_epoch": c.seconds_per_epoch,
            }
        )
    first = configurations[0].summary["tracks"][UNIVERSE]
    verdict = zoo_verdict(books, configurations[0].universe["buy_and_hold"], cfg)
    study = {
        "configurations": len(configurations),
        "n_trials": n_trials,
        "null_sharpe_per_bar": null,
        "pbo": pbo(books),
        "buy_and_hold_sharpe": first["buy_and_hold"]["sharpe"],
        "bars": first["bars"],
        "verdict": verdict,
    }
    table = pd.DataFrame(rows)
    included = verdict["mcs"].get("included")
    table["in_mcs"] = None if included is None else table["configuration"].isin(included)
    return table, study


def zoo_verdict(books: pd.DataFrame, hold: pd.Series, cfg: Config) -> dict[str, Any]:
    """SPA and StepM of the configurations' universe books (``books``: time + one column each) against
    buy-and-hold ``hold``, and their model confidence set with it; a part that can not be computed says why."""
    bars_per_day = 24 * 60 // cfg.data.timeframe_minutes
    setting = Setting(bars_per_day * cfg.eval.days_per_year, bars_per_day, cfg.seed)
    frame = books.drop(columns="time").assign(buy_and_hold=hold.to_numpy())
    unique, copies = distinct(frame)  # arch's MCS fails on two identical loss series; a copy shares its twin's place
    spa, mcs = search_tests(unique, copies.get("buy_and_hold", "buy_and_hold"), setting)
    if "included" in mcs:
        mcs["included"] += [name for name, twin in copies.items() if twin in mcs["included"]]
    return {"spa": spa, "mcs": mcs, "copies": copies}


def run_configuration(
    entry: Entry, phase: str, cfg: Config, tables: dict[str, Any], out: Path, workers: int
) -> Configuration:
    """One configuration's folds (trained where not cached), pooled as the evaluate stage pools them."""
    folds = [(fold_data(fold, tables, cfg), out / fold.name) for fold in plan_folds(cfg.folds, cfg.split)]
    clocks: dict[str, EpochClock] = {}

    def hooks_for(fold: str, group: str, kind: str) -> EpochClock:
        return clocks.setdefault(kind, EpochClock())

    if workers:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, workers=workers))
    results = run_folds(cfg, folds, hooks_for)
    policy = clocks.get("policy")
    if policy is not None and policy.epochs:
        write_json(out / "timing.json", {"seconds": policy.seconds, "epochs": policy.epochs})
    timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").exists() else None
    summary, tracks, _ = summarize(cfg, results)
    return Configuration(
        entry,
        phase,
        summary,
        tracks["universe"],
        val_score(results),
        turnover(results),
        timing["seconds"] / timing["epochs"] if timing else None,
    )


def describe(cfg: Config, size: str, n_configurations: int) -> str:
    """The study's size in one sentence, for the table's header."""
    plan = plan_folds(cfg.folds, cfg.split)
    t = cfg.train
    return (
        f"Size `{size}`: {n_configurations} configurations; {len(cfg.data.universe)} assets "
        f"({', '.join(cfg.data.universe)}) at {cfg.data.timeframe_minutes}-minute bars; {len(plan)} fold(s) "
        f"({cfg.folds.scheme}), tests {plan[0].describe()['test_start']} .. {plan[-1].describe()['test_end']}; "
        f"window {cfg.window.context} + {cfg.window.horizon} bars; {len(t.seeds)} seeds x {t.epochs} epochs per "
        f"configuration and fold, {cfg.thresholds.trials} threshold trials per seed and asset; training "
        f"{t.universe}, {t.threads or 'default'} thread(s)."
    )


def zoo_markdown(header: str, study: dict[str, Any], best: list[Entry], table: pd.DataFrame) -> str:
    """``zoo.md``: the study's size, how its numbers are deflated, and the table."""
    pbo_ = study["pbo"]
    return (
        f"# Backbone and loss benchmark\n\n{header}\n\n"
        f"Universe book (equal weight), policy seed ensemble, stitched out of sample; buy-and-hold "
        f"{study['buy_and_hold_sharpe']:+.2f} on the same {study['bars']} bars. `dsr_study` deflates by all "
        f"{study['n_trials']} trials of the study's {study['configurations']} configurations (`dsr_own`: the "
        f"configuration's own); PBO over the configurations {pbo_['pbo']:.2f} ({pbo_['n_blocks']} blocks). "
        f"Phase two ran on: {', '.join(e.name for e in best)} (best val score).\n\n{_verdict_line(study['verdict'])}"
        f"\n\n{to_markdown(table)}"
    )


def _verdict_line(verdict: dict[str, Any]) -> str:
    """The verdict over the configurations in two sentences (``in_mcs``: the configuration is in the set)."""
    spa, mcs = verdict["spa"], verdict["mcs"]
    if NOT_COMPUTABLE in spa:
        first = f"SPA against buy-and-hold: not computable ({spa[NOT_COMPUTABLE]})."
    else:
        first = (
            f"SPA of the configurations against buy-and-hold (mean net return): p = {spa['consistent']:.3f}; StepM "
            f"(5% family-wise) names {', '.join(spa['stepm']) or 'none'}."
        )
    if NOT_COMPUTABLE in mcs:
        return f"{first} Model confidence set: not computable ({mcs[NOT_COMPUTABLE]})."
    kept = ", ".join(mcs["included"])
    return f"{first} The {100 * (1 - MCS_SIZE):.0f}% model confidence set (with buy-and-hold): {kept}."


def _dsr(net: np.ndarray, null: float) -> float | None:
    try:
        return probabilistic_sharpe_ratio(net, null)
    except ValueError:  # a book that never traded has no Sharpe to deflate
        return None


def _aligned_books(configurations: list[Configuration]) -> pd.DataFrame:
    """Every configuration's universe book as a column, on the bars they share (the same folds and assets)."""
    times = configurations[0].universe["time"]
    for c in configurations[1:]:
        if not c.universe["time"].equals(times):
            raise ValueError(f"{c.entry.name}: its universe book has other bars than {configurations[0].entry.name}'s")
    return pd.DataFrame({"time": times, **{c.entry.name: c.universe["policy"] for c in configurations}})
