"""The portfolio study's summary and report: one stitched book against its baselines, said plainly.

The book's stitched track is judged like a single-asset track (``judge_track``: metrics, PSR, DSR, intervals, cost
sweep; the interval of a difference against 1/N), and against each baseline separately with a paired
stationary bootstrap of the Sharpe difference. The portfolio *beats* a baseline when that difference's 95% interval
lies above zero; anything else is reported as not beating it, whatever the point estimates say.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from diffquant.config import Config
from diffquant.evaluate.compare import to_markdown
from diffquant.evaluate.entries import BASELINES, BOOKS, PORTFOLIO
from diffquant.evaluate.metrics import sharpe
from diffquant.evaluate.stats import bootstrap_sharpe_ci
from diffquant.study.book_run import BENCHMARK
from diffquant.study.fold_result import FoldResult
from diffquant.study.pooled import judge_track, pbo, stitch, trials_of, verdict_of
from diffquant.study.verdict_report import Labels, verdict_markdown

LABELS = Labels("1/N", "the portfolio", "folds")


def book_fold_table(results: list[FoldResult]) -> pd.DataFrame:
    """One row per fold: each book's test Sharpe."""
    rows = []
    for result in results:
        e = result.book_entry()
        row = {"fold": result.name, PORTFOLIO: e.ensemble["sharpe"]}
        rows.append(row | {b: e.baselines[b]["sharpe"] for b in BASELINES})
    return pd.DataFrame(rows)


def asset_table(results: list[FoldResult]) -> pd.DataFrame:
    """Per asset over the folds: its summed contribution to the book's net return (%), mean turnover, mean |w|."""
    rows = [{"fold": r.name, "asset": s, **v} for r in results for s, v in r.book_entry().assets.items()]
    table = pd.DataFrame(rows).groupby("asset", sort=False)
    return table.agg(
        contribution_pct=("contribution_pct", "sum"),
        turnover=("turnover", "mean"),
        mean_abs_weight=("mean_abs_weight", "mean"),
    ).reset_index()


def summarize_book(
    cfg: Config, results: list[FoldResult]
) -> tuple[dict[str, Any], dict[str, pd.DataFrame], pd.DataFrame]:
    """The study's numbers, its one track and the per-fold table."""
    bars_per_day = 24 * 60 // cfg.data.timeframe_minutes
    bars_per_year = bars_per_day * cfg.eval.days_per_year
    tracks = stitch(results)
    track = tracks[PORTFOLIO]
    trials = trials_of(results, [PORTFOLIO])
    judged = judge_track(
        track, trials, bars_per_year, bars_per_day, cfg.seed, list(cfg.eval.cost_multipliers), BOOKS, BENCHMARK
    )
    ann = bars_per_year**0.5
    net = track[PORTFOLIO].to_numpy()
    versus = {}
    for b in BASELINES:
        low, high = bootstrap_sharpe_ci(net, bars_per_year, bars_per_day, seed=cfg.seed, benchmark=track[b].to_numpy())
        difference = sharpe(net, ann) - sharpe(track[b].to_numpy(), ann)
        versus[b] = {"difference": difference, "ci_low": low, "ci_high": high, "beats": low > 0}
    summary = {
        "folds": [r.fold for r in results],
        "scheme": cfg.folds.scheme,
        "model_kind": "portfolio",
        "excluded": {r.name: r.excluded for r in results if r.excluded},
        "tracks": {PORTFOLIO: judged},
        "pbo": pbo(track),
        "versus": versus,
        "beats_every_baseline": all(v["beats"] for v in versus.values()),
        "verdict": verdict_of(track, tracks, PORTFOLIO, BENCHMARK, bars_per_year, bars_per_day, cfg.seed),
        "assets": asset_table(results).to_dict(orient="records"),
    }
    return summary, tracks, book_fold_table(results)


def _fmt(value: float | None, spec: str = "+.2f") -> str:
    return "n/a" if value is None else format(value, spec)


def verdict(summary: dict[str, Any]) -> str:
    """One sentence: does the portfolio beat its baselines, out of sample, beyond the bootstrap's doubt."""
    v = summary["versus"]
    beaten = [b for b in BASELINES if v[b]["beats"]]
    if len(beaten) == len(BASELINES):
        return "The portfolio beats every baseline: each Sharpe difference's 95% interval lies above zero."
    missing = ", ".join(
        f"{b.replace('_', ' ')} ({_fmt(v[b]['difference'])}, 95% {_fmt(v[b]['ci_low'])} .. {_fmt(v[b]['ci_high'])})"
        for b in BASELINES
        if not v[b]["beats"]
    )
    return f"The portfolio does not beat {missing}" + (
        f"; it does beat {', '.join(b.replace('_', ' ') for b in beaten)}." if beaten else "."
    )


def render_book_report(experiment: str, summary: dict[str, Any], table: pd.DataFrame) -> str:
    folds, entry = summary["folds"], summary["tracks"][PORTFOLIO]
    rows = []
    for book in BOOKS:
        e = entry[book]
        rows.append(
            f"| {book.replace('_', ' ')} | {_fmt(e['sharpe'])} | [{_fmt(e['sharpe_ci_low'])}, "
            f"{_fmt(e['sharpe_ci_high'])}] | {_fmt(e['psr'], '.2f')} | {_fmt(e['dsr'], '.2f')} | "
            f"{_fmt(e['total_return_pct'], '+.1f')} | {_fmt(e['max_drawdown_pct'], '.1f')} |"
        )
    lines = [
        f"# {experiment}: portfolio walk-forward ({summary['scheme']}, {len(folds)} folds, "
        f"{folds[0]['test_start']} .. {folds[-1]['test_end']}, {len(summary['assets'])} asset(s))",
        "",
        verdict(summary),
        "",
        f"DSR of the portfolio {_fmt(entry[PORTFOLIO]['dsr'], '.2f')} with {entry['n_trials'].get(PORTFOLIO, 0)} "
        f"trials; PBO {summary['pbo']['pbo']:.2f} over {summary['pbo']['n_configurations']} configurations.",
        "",
        "| book | Sharpe | 95% interval | PSR | DSR | return % | max DD % |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        verdict_markdown(summary["verdict"], LABELS),
        "## Per asset (the ensemble's book)",
        "",
        to_markdown(pd.DataFrame(summary["assets"])),
        "",
        "## Each fold (test Sharpe)",
        "",
        to_markdown(table),
        "",
        "Each fold's book starts flat at its first test bar and is not charged an exit at the fold's end. Baselines "
        "hold weights as fractions of equity, as the simulator prices every book.",
        "",
    ]
    return "\n".join(lines)
