"""Folds stage: every walk-forward fold of ``folds:`` trained, chosen on its val window and traded on its test.

Reads the features stage's table of every asset; runs the folds of ``diffquant.folds.plan_folds``
through ``diffquant.study.fold_run.run_folds`` into ``<out>/<fold>/`` (their training units as one grid on
``train.workers`` processes). The output folder persists between runs (DVC
``persist``): a fold whose data, params and code are unchanged is not run again, an interrupted fold resumes its
seeds from their last epoch, so appending a fold trains only that fold. MLflow: one parent run, a child per fold x
model group x seed. Run as ``python -m stages.folds``.
"""

from __future__ import annotations

import logging

from diffquant import tracking
from diffquant.config import flatten
from diffquant.folds import plan_folds
from diffquant.io import read_parquet
from diffquant.study.fold_data import fold_data
from diffquant.study.fold_run import headline, run_folds
from stages._cli import load_params, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.folds")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, training=True)
    p.add_argument("--features", default="data_source/features", help="the features stage's folder")
    p.add_argument("--out", default="outputs/folds", help="one folder per fold (persistent)")
    p.add_argument("--metrics", default="outputs/metrics/folds.json", help="metrics JSON for dvc metrics")
    args = p.parse_args(argv)
    root, out = repo_root(), repo_root() / args.out
    cfg = load_params(args.params, args.workers, args.grid_address)
    tracking.check_reachable(tracking.tracking_uri(root))
    tables = {s: read_parquet(root / args.features / f"{s}.parquet", "features") for s in cfg.data.universe}
    plan = plan_folds(cfg.folds, cfg.split)
    runs = tracking.StudyRuns(
        root,
        f"{cfg.experiment}/walk-forward",
        flatten(cfg.to_dict()),
        {"scheme": cfg.folds.scheme, "universe": cfg.train.universe, "symbols": ",".join(cfg.data.universe)},
        out / "mlflow_run.json",
    )
    folds = []
    for i, fold in enumerate(plan, 1):
        data = fold_data(fold, tables, cfg)
        log.info(
            "fold %d/%d %s: train %s .. %s, %d asset(s)%s",
            i,
            len(plan),
            fold.name,
            fold.describe()["train_start"],
            fold.describe()["train_end"],
            len(data.assets),
            f", left out: {', '.join(data.excluded)}" if data.excluded else "",
        )
        folds.append((data, out / fold.name))
    metrics = {result.name: headline(result) for result in run_folds(cfg, folds, runs.hooks)}
    write_json(out / "plan.json", {"symbols": cfg.data.universe, "folds": [f.describe() for f in plan]})
    write_json(root / args.metrics, metrics)


if __name__ == "__main__":
    run_stage(main)
