"""The study's summary (``study.json``) and ``report.md``: the universe book first, then each asset, then each fold."""

from __future__ import annotations

from typing import Any

import pandas as pd

from diffquant.config import Config
from diffquant.evaluate.compare import to_markdown
from diffquant.study.fold_result import FoldResult
from diffquant.study.pooled import (
    BOOKS,
    UNIVERSE,
    fold_table,
    judge_track,
    pbo,
    pooled_difference,
    stitch,
    trials_of,
    universe_book,
    verdict_of,
)
from diffquant.study.verdict_report import Labels, verdict_markdown

LABELS = Labels("buy-and-hold", "the policy", "asset-folds")


def summarize(cfg: Config, results: list[FoldResult]) -> tuple[dict[str, Any], dict[str, pd.DataFrame], pd.DataFrame]:
    """The study's numbers, its tracks (the universe book first, then each asset) and the asset x fold table."""
    bars_per_day = 24 * 60 // cfg.data.timeframe_minutes
    bars_per_year = bars_per_day * cfg.eval.days_per_year
    costs = list(cfg.eval.cost_multipliers)
    assets = stitch(results)
    tracks = {UNIVERSE: universe_book(assets), **assets}

    def judge(name: str, track: pd.DataFrame) -> dict[str, Any]:
        symbols = list(assets) if name == UNIVERSE else [name]
        return judge_track(track, trials_of(results, symbols), bars_per_year, bars_per_day, cfg.seed, costs)

    table = fold_table(results)
    summary = {
        "folds": [r.fold for r in results],
        "scheme": cfg.folds.scheme,
        "train_universe": cfg.train.universe,
        "excluded": {r.name: r.excluded for r in results if r.excluded},
        "tracks": {name: judge(name, t) for name, t in tracks.items()},
        "pbo": pbo(tracks[UNIVERSE]),
        "pooled_policy_minus_bh": pooled_difference(assets, bars_per_year, bars_per_day, cfg.seed),
        "verdict": verdict_of(
            tracks[UNIVERSE], assets, "policy", "buy_and_hold", bars_per_year, bars_per_day, cfg.seed
        ),
        "fold_spread": {
            "policy_minus_bh_median": float(table["policy_minus_bh"].median()),
            "policy_beats_bh_share": float((table["policy_minus_bh"] > 0).mean()),
            "asset_folds": len(table),
        },
    }
    return summary, tracks, table


def _fmt(value: float | None, spec: str = "+.2f") -> str:
    return "n/a" if value is None else format(value, spec)


def _track_rows(name: str, entry: dict[str, Any]) -> list[str]:
    rows = []
    for book in [b for b in BOOKS if b in entry]:
        e = entry[book]
        rows.append(
            f"| {name} | {book.replace('_', ' ')} | {_fmt(e['sharpe'])} | [{_fmt(e['sharpe_ci_low'])}, "
            f"{_fmt(e['sharpe_ci_high'])}] | [{_fmt(e['sharpe_minus_benchmark_ci_low'])}, "
            f"{_fmt(e['sharpe_minus_benchmark_ci_high'])}] | {_fmt(e['psr'], '.2f')} | {_fmt(e['dsr'], '.2f')} | "
            f"{_fmt(e['total_return_pct'], '+.1f')} | {_fmt(e['max_drawdown_pct'], '.1f')} |"
        )
    return rows


HEADER = (
    "| track | book | Sharpe | 95% interval | minus buy-and-hold, 95% | PSR | DSR | return % | max DD % |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def render_report(experiment: str, summary: dict[str, Any], table: pd.DataFrame) -> str:
    tracks, folds = summary["tracks"], summary["folds"]
    u = tracks[UNIVERSE]
    joint, indep = summary["pooled_policy_minus_bh"]["joint"], summary["pooled_policy_minus_bh"]["independent"]
    lines = [
        f"# {experiment}: walk-forward study ({summary['scheme']}, {len(folds)} folds, "
        f"{folds[0]['test_start']} .. {folds[-1]['test_end']}, {len(tracks) - 1} asset(s), "
        f"training {summary['train_universe']})",
        "",
        "## The universe book (equal weight over the assets with data), stitched out of sample",
        "",
        f"Policy Sharpe {_fmt(u['policy']['sharpe'])} (95% interval {_fmt(u['policy']['sharpe_ci_low'])} .. "
        f"{_fmt(u['policy']['sharpe_ci_high'])}), buy-and-hold {_fmt(u['buy_and_hold']['sharpe'])}; "
        f"DSR {_fmt(u['policy']['dsr'], '.2f')} with {u['n_trials'].get('policy', 0)} trials; "
        f"PBO {summary['pbo']['pbo']:.2f} over {summary['pbo']['n_configurations']} configurations.",
        "",
        f"Policy minus buy-and-hold, mean over {int(joint['n_asset_periods'])} asset-folds: "
        f"{_fmt(joint['mean'])} Sharpe, 95% interval {_fmt(joint['ci_low'])} .. {_fmt(joint['ci_high'])} "
        f"(time blocks resampled jointly across assets; treating assets as independent would claim "
        f"{_fmt(indep['ci_low'])} .. {_fmt(indep['ci_high'])}).",
        "",
        HEADER,
        *_track_rows(UNIVERSE, u),
        "",
        verdict_markdown(summary["verdict"], LABELS),
        "## Each asset, stitched",
        "",
        HEADER,
        *[row for name, entry in tracks.items() if name != UNIVERSE for row in _track_rows(name, entry)],
        "",
        "## Each fold (test Sharpe)",
        "",
        f"Policy minus buy-and-hold over {summary['fold_spread']['asset_folds']} asset-folds: median "
        f"{_fmt(summary['fold_spread']['policy_minus_bh_median'])}, positive in "
        f"{100 * summary['fold_spread']['policy_beats_bh_share']:.0f}%.",
        "",
        to_markdown(table),
        "",
    ]
    if summary["excluded"]:
        lines += ["## Left out (no data for the fold)", ""]
        lines += [f"- fold {fold}: {', '.join(why)}" for fold, why in summary["excluded"].items()]
        lines.append("")
    lines += [
        "Each fold's book starts flat at its first test bar, paying its entry, and its last position is not "
        "charged an exit at the fold's end (as in the evaluate stage's quarters): one uncharged exit per fold.",
        "",
    ]
    return "\n".join(lines)
