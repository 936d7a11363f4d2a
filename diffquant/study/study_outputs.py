"""The evaluate stage's study files and numbers: the folds' tracks stitched and judged, written as tables and
figures, with the MLflow metrics, the report body and what the registry gates judge, for either kind of study.

A single-asset study judges the universe book and every asset (``report.summarize``); a portfolio study its one book
beside the baselines (``book_report.summarize_book``); ``StudyKind.judge_study`` (``diffquant.study.kinds``) picks
which. Nothing here talks to MLflow: the stage logs what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffquant.config import Config
from diffquant.evaluate.entries import BOOKS as BOOK_NAMES
from diffquant.evaluate.entries import PORTFOLIO
from diffquant.evaluate.metric_names import study_metric
from diffquant.io import write_csv
from diffquant.plots import plot_asset_contributions, plot_fold_heatmap, plot_stitched, plot_weight_heatmap
from diffquant.study.book_report import render_book_report, summarize_book, verdict
from diffquant.study.book_run import BENCHMARK, stitched_weights
from diffquant.study.fold_result import FoldResult
from diffquant.study.pooled import BOOKS, UNIVERSE
from diffquant.study.report import render_report, summarize
from diffquant.study.verdict import spa_pvalue
from diffquant.study.verdict_report import verdict_metrics, verdict_tags

EQUITY_CSV = "equity.csv"
HEADLINE_KEYS = ("sharpe", "sharpe_ci_low", "sharpe_ci_high", "psr", "dsr")  # per book, under study_metric names


@dataclass(frozen=True)
class JudgedStudy:
    """What the stage writes and logs besides the files already in ``out``; ``artifacts`` include the headline
    track (``tracks/<name>.csv``), which compare reads back to run SPA across studies."""

    summary: dict[str, Any]  # study.json (the stage adds the registry's verdicts)
    report: str  # report.md before its registry section
    metrics: dict[str, float | None]  # for the study's MLflow run
    artifacts: tuple[str, ...]  # files of ``out`` to log with the run
    gated: dict[str, dict[str, Any]]  # policy name -> the stitched entry the registry gates judge
    benchmark: str | None  # what "beats buy-and-hold" is measured against, when not buy-and-hold itself
    headline: str  # one line for the log
    tags: dict[str, str]  # for the study's MLflow run: the verdict's StepM set and confidence set
    spa_p: float | None  # the verdict's SPA p-value, for the registry's max_spa_p gate (None: not computable)


def headline_metrics(track: str, entry: dict[str, Any], books: tuple[str, ...]) -> dict[str, float | None]:
    """Each judged book's headline numbers under ``study_metric`` names (what compare's studies table reads)."""
    return {study_metric(track, b, k): entry[b][k] for b in books if b in entry for k in HEADLINE_KEYS}


def write_equity(track: pd.DataFrame, book: str, benchmark: str, path: Path) -> None:
    """The headline book's and its benchmark's equity per bar over the stitched out-of-sample track (what
    ``dvc plots`` draws): each fold's book compounds on from where the previous fold ended."""
    equity = {
        "equity": np.cumprod(1.0 + track[book].to_numpy()),
        "benchmark": np.cumprod(1.0 + track[benchmark].to_numpy()),
    }
    write_csv(path, pd.DataFrame({"time": track["time"], **equity}))


def judge_asset_study(cfg: Config, results: list[FoldResult], out: Path) -> JudgedStudy:
    """A single-asset study of ``results`` (the folds in test order), its files in ``out``."""
    summary, tracks, table = summarize(cfg, results)
    write_csv(out / "folds.csv", table)
    for name, track in tracks.items():
        write_csv(out / "tracks" / f"{name}.csv", track)
    plot_stitched(tracks, BOOKS, out / "equity.png")
    write_equity(tracks[UNIVERSE], "policy", "buy_and_hold", out / EQUITY_CSV)
    plot_fold_heatmap(table, "policy_minus_bh", out / "heatmap.png")
    metrics: dict[str, float | None] = {}
    for name, entry in summary["tracks"].items():
        metrics |= headline_metrics(name, entry, BOOKS)
    metrics |= {f"{r.asset}/{r.fold}/policy_minus_bh": r.policy_minus_bh for r in table.itertuples(index=False)}
    metrics["pbo"] = summary["pbo"]["pbo"]
    metrics |= {f"pooled_minus_bh_{k}": v for k, v in summary["pooled_policy_minus_bh"]["joint"].items()}
    metrics |= verdict_metrics(summary["verdict"])
    u = summary["tracks"][UNIVERSE]
    headline = (
        f"universe book: policy Sharpe {u['policy']['sharpe']:+.2f} [{u['policy']['sharpe_ci_low']:+.2f}, "
        f"{u['policy']['sharpe_ci_high']:+.2f}] vs buy-and-hold {u['buy_and_hold']['sharpe']:+.2f}; "
        f"PBO {summary['pbo']['pbo']:.2f}"
    )
    return JudgedStudy(
        summary=summary,
        report=render_report(cfg.experiment, summary, table),
        metrics=metrics,
        artifacts=("report.md", "folds.csv", "equity.png", "heatmap.png", f"tracks/{UNIVERSE}.csv"),
        gated={s: summary["tracks"][s]["policy"] for s in results[-1].entries},
        benchmark=None,
        headline=headline,
        tags=verdict_tags(summary["verdict"]),
        spa_p=spa_pvalue(summary["verdict"]),
    )


def judge_book_study(cfg: Config, results: list[FoldResult], folds: list[Path], out: Path) -> JudgedStudy:
    """A portfolio study of ``results`` (the folds in test order, from the fold folders ``folds``: the book's weights
    are read there), its files in ``out``."""
    summary, tracks, table = summarize_book(cfg, results)
    weights = stitched_weights(folds)
    write_csv(out / "folds.csv", table)
    write_csv(out / "tracks" / f"{PORTFOLIO}.csv", tracks[PORTFOLIO])
    write_csv(out / "weights.csv", weights)
    plot_stitched(tracks, BOOK_NAMES, out / "equity.png")
    write_equity(tracks[PORTFOLIO], PORTFOLIO, BENCHMARK, out / EQUITY_CSV)
    plot_weight_heatmap(weights, out / "heatmap.png")
    plot_asset_contributions(pd.DataFrame(summary["assets"]), out / "assets.png")
    metrics = headline_metrics(PORTFOLIO, summary["tracks"][PORTFOLIO], BOOK_NAMES)
    for row in summary["assets"]:
        metrics |= {f"{row['asset']}/{k}": row[k] for k in ("contribution_pct", "turnover", "mean_abs_weight")}
    metrics["pbo"] = summary["pbo"]["pbo"]
    metrics |= {f"minus_{b}": v["difference"] for b, v in summary["versus"].items()}
    metrics |= verdict_metrics(summary["verdict"])
    return JudgedStudy(
        summary=summary,
        report=render_book_report(cfg.experiment, summary, table),
        metrics=metrics,
        artifacts=("report.md", "folds.csv", "equity.png", "heatmap.png", "assets.png", f"tracks/{PORTFOLIO}.csv"),
        gated={PORTFOLIO: summary["tracks"][PORTFOLIO][PORTFOLIO]},
        benchmark="1/N",
        headline=verdict(summary),
        tags=verdict_tags(summary["verdict"]),
        spa_p=spa_pvalue(summary["verdict"]),
    )
