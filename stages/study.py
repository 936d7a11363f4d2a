"""Study stage: the folds' out-of-sample tracks stitched, pooled and judged (``diffquant.study.report``).

Reads the folds stage's ``plan.json`` and each fold's result; writes ``<out>/report.md`` (the universe book against
buy-and-hold first: Sharpe, interval, DSR, PBO; then each asset; then each fold), ``study.json``, ``folds.csv``
(asset x fold), ``tracks/<name>.csv`` (the stitched per-bar returns), the stitched equity figure and the asset x fold
heat map, and logs them to the folds stage's MLflow parent run. Run as ``python -m stages.study``.
"""

from __future__ import annotations

import logging

from diffquant import tracking
from diffquant.data.contracts import atomic_path, read_json
from diffquant.plots import plot_fold_heatmap, plot_stitched
from diffquant.study.fold_run import load_fold
from diffquant.study.pooled import BOOKS, UNIVERSE
from diffquant.study.report import render_report, summarize
from stages._cli import load_params, parser, repo_root, run_stage, write_csv, write_json

log = logging.getLogger("diffquant.stages.study")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--folds", default="outputs/folds", help="the folds stage's folder")
    p.add_argument("--out", default="outputs/study")
    p.add_argument("--metrics", default="outputs/metrics/study.json")
    args = p.parse_args(argv)
    root, out, folds_dir = repo_root(), repo_root() / args.out, repo_root() / args.folds
    cfg = load_params(args.params)

    plan = read_json(folds_dir / "plan.json", "the folds stage")
    results = [load_fold(folds_dir / fold["name"]) for fold in plan["folds"]]
    summary, tracks, table = summarize(cfg, results)

    write_csv(out / "folds.csv", table)
    for name, track in tracks.items():
        write_csv(out / "tracks" / f"{name}.csv", track)
    plot_stitched(tracks, BOOKS, out / "equity.png")
    plot_fold_heatmap(table, "policy_minus_bh", out / "heatmap.png")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render_report(cfg.experiment, summary, table))
    write_json(root / args.metrics, summary)

    parent = tracking.open_run(root, tracking.read_run_id(folds_dir / "mlflow_run.json"))
    for name, entry in summary["tracks"].items():
        for book in [b for b in BOOKS if b in entry]:
            parent.log_metrics({f"{name}/{book}/{k}": entry[book][k] for k in ("sharpe", "psr", "dsr")})
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


if __name__ == "__main__":
    run_stage(main)
