"""Study stage: the folds' out-of-sample tracks stitched, pooled and judged (``diffquant.study.report``).

Reads the folds stage's ``plan.json`` and each fold's result; writes ``<out>/report.md`` (the universe book against
buy-and-hold first: Sharpe, interval, DSR, PBO; then each asset; then each fold), ``study.json``, ``folds.csv``
(asset x fold), ``tracks/<name>.csv`` (the stitched per-bar returns), the stitched equity figure and the asset x fold
heat map, and logs them to the folds stage's MLflow parent run. With ``registry.register``, each asset's policy of
the newest fold becomes a registered model, gated on its stitched track (``diffquant.deploy.study_registry``). Run as
``python -m stages.study``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from diffquant import tracking
from diffquant.config import Config
from diffquant.data.contracts import atomic_path, read_json
from diffquant.deploy.study_registry import (
    judge_assets,
    judge_book,
    publish_newest_fold,
    registry_markdown,
    registry_summary,
)
from diffquant.evaluate.metric_names import study_metric
from diffquant.plots import plot_asset_contributions, plot_fold_heatmap, plot_stitched, plot_weight_heatmap
from diffquant.study.book_report import render_book_report, summarize_book, verdict
from diffquant.study.book_run import BOOKS as BOOK_NAMES
from diffquant.study.book_run import PORTFOLIO, stitched_weights
from diffquant.study.fold_run import FoldResult, load_fold
from diffquant.study.pooled import BOOKS, UNIVERSE
from diffquant.study.report import render_report, summarize
from stages._cli import load_params, parser, repo_root, run_stage, write_csv, write_json

log = logging.getLogger("diffquant.stages.study")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--folds", default="outputs/folds", help="the folds stage's folder")
    p.add_argument("--universe", default="data_source/universe", help="the universe stage's folder (model inputs)")
    p.add_argument("--out", default="outputs/study")
    p.add_argument("--metrics", default="outputs/metrics/study.json")
    args = p.parse_args(argv)
    root, out, folds_dir = repo_root(), repo_root() / args.out, repo_root() / args.folds
    cfg = load_params(args.params)

    plan = read_json(folds_dir / "plan.json", "the folds stage")
    results = [load_fold(folds_dir / fold["name"]) for fold in plan["folds"]]
    if cfg.model.kind == "portfolio":
        folds = [folds_dir / f["name"] for f in plan["folds"]]
        book_study(cfg, root / args.metrics, out, folds_dir, folds, results, root / args.universe)
        return
    summary, tracks, table = summarize(cfg, results)
    newest = results[-1]
    verdicts = judge_assets(summary, list(newest.entries), cfg.registry)
    summary["registry"] = registry_summary(verdicts, newest.name)

    write_csv(out / "folds.csv", table)
    for name, track in tracks.items():
        write_csv(out / "tracks" / f"{name}.csv", track)
    plot_stitched(tracks, BOOKS, out / "equity.png")
    plot_fold_heatmap(table, "policy_minus_bh", out / "heatmap.png")
    with atomic_path(out / "report.md") as tmp:
        report = render_report(cfg.experiment, summary, table)
        tmp.write_text(f"{report}\n{registry_markdown(cfg.experiment, verdicts, newest.name)}")
    write_json(root / args.metrics, summary)

    parent = tracking.open_run(root, tracking.read_run_id(folds_dir / "mlflow_run.json"))
    if cfg.registry.register:
        publish_newest_fold(cfg, root, parent, folds_dir / newest.name, root / args.universe, verdicts)
    for name, entry in summary["tracks"].items():
        for book in [b for b in BOOKS if b in entry]:
            log_book(parent, name, book, entry[book])
    for row in table.itertuples(index=False):
        parent.log_metrics({f"{row.asset}/{row.fold}/policy_minus_bh": row.policy_minus_bh})
    parent.log_metrics(
        {
            "pbo": summary["pbo"]["pbo"],
            **{f"pooled_minus_bh_{k}": v for k, v in summary["pooled_policy_minus_bh"]["joint"].items()},
        }
    )
    for name in ("report.md", "folds.csv", "equity.png", "heatmap.png"):
        parent.log_artifact(out / name, "study")
    u = summary["tracks"][UNIVERSE]
    log.info(
        "universe book: policy Sharpe %+.2f [%+.2f, %+.2f] vs buy-and-hold %+.2f; PBO %.2f; report in %s",
        u["policy"]["sharpe"],
        u["policy"]["sharpe_ci_low"],
        u["policy"]["sharpe_ci_high"],
        u["buy_and_hold"]["sharpe"],
        summary["pbo"]["pbo"],
        out / "report.md",
    )


def log_book(run: tracking.Run, track: str, book: str, entry: dict[str, Any]) -> None:
    """A judged book's headline numbers under ``study_metric`` names (``Run.log_metrics`` leaves an undefined one
    out, such as the DSR of a baseline that tried nothing)."""
    keys = ("sharpe", "sharpe_ci_low", "sharpe_ci_high", "psr", "dsr")
    run.log_metrics({study_metric(track, book, k): entry[k] for k in keys})


def book_study(
    cfg: Config,
    metrics: Path,
    out: Path,
    folds_dir: Path,
    folds: list[Path],
    results: list[FoldResult],
    universe: Path,
) -> None:
    """The portfolio's study: its stitched book beside the baselines, the weights' heat map, each asset's part."""
    root = repo_root()
    summary, tracks, table = summarize_book(cfg, results)
    verdicts = judge_book(summary, cfg.registry)
    summary["registry"] = registry_summary(verdicts, results[-1].name)
    weights = stitched_weights(folds)
    write_csv(out / "folds.csv", table)
    write_csv(out / "tracks" / f"{PORTFOLIO}.csv", tracks[PORTFOLIO])
    write_csv(out / "weights.csv", weights)
    plot_stitched(tracks, BOOK_NAMES, out / "equity.png")
    plot_weight_heatmap(weights, out / "heatmap.png")
    plot_asset_contributions(pd.DataFrame(summary["assets"]), out / "assets.png")
    with atomic_path(out / "report.md") as tmp:
        report = render_book_report(cfg.experiment, summary, table)
        tmp.write_text(f"{report}\n{registry_markdown(cfg.experiment, verdicts, results[-1].name)}")
    write_json(metrics, summary)

    parent = tracking.open_run(root, tracking.read_run_id(folds_dir / "mlflow_run.json"))
    if cfg.registry.register:
        publish_newest_fold(cfg, root, parent, folds[-1], universe, verdicts)
    entry = summary["tracks"][PORTFOLIO]
    for book in BOOK_NAMES:
        log_book(parent, PORTFOLIO, book, entry[book])
    for row in summary["assets"]:
        parent.log_metrics({f"{row['asset']}/{k}": row[k] for k in ("contribution_pct", "turnover", "mean_abs_weight")})
    parent.log_metrics(
        {"pbo": summary["pbo"]["pbo"], **{f"minus_{b}": v["difference"] for b, v in summary["versus"].items()}}
    )
    for name in ("report.md", "folds.csv", "equity.png", "heatmap.png", "assets.png"):
        parent.log_artifact(out / name, "study")
    log.info("%s; report in %s", verdict(summary), out / "report.md")


if __name__ == "__main__":
    run_stage(main)
