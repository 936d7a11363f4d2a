"""Train stage: every seed's policy of every model group of every fold, as one grid (``diffquant.study.fold_models``).

Reads the split stage's fold plan and cuts. Each group trains into ``<out>/<group>/<digest>/seed_<s>/``, the digest
naming the train and val data it learns from: folds with the same data (the ``single`` scheme's two) share a
folder, an appended fold or asset trains only its own, a finished seed is not trained again and a killed one resumes
from its ``last.pt``. ``train.workers`` processes (or Ray, ``train.grid_address``) share the grid. MLflow: the
study's parent run (its id in ``--run-file``, where evaluate logs the results) and a child per fold x group x seed.
"""

from __future__ import annotations

from diffquant import tracking
from diffquant.config import flatten
from diffquant.evaluate.stats import distribution
from diffquant.plots import plot_history
from diffquant.study.fold_data import read_folds, study_digest
from diffquant.study.fold_models import keyed_folders, train_groups
from diffquant.train.layout import HISTORY_PLOT
from diffquant.train.trainer import resolve_device
from stages._cli import load_params, parser, repo_root, run_stage, write_json


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, training=True)
    p.add_argument("--split", default="data_source/split", help="the split stage's fold plan and cuts")
    p.add_argument("--raw", default="data_source/raw", help="the download stage's folder: quality reports logged")
    p.add_argument("--out", default="outputs/train")
    p.add_argument("--metrics", default="outputs/metrics/train.json")
    p.add_argument("--run-file", default="outputs/mlflow_run.json", help="where evaluate finds the study's run")
    args = p.parse_args(argv)
    root, out = repo_root(), repo_root() / args.out
    cfg = load_params(args.params, args.workers, args.grid_address)
    tracking.check_reachable(tracking.tracking_uri(root))  # fail before hours of training, not after
    resolve_device(cfg.train.device)  # refuses a device this machine lacks before any run is opened
    folds = read_folds(root / args.split)

    tags = {"scheme": cfg.folds.scheme, "universe": cfg.train.universe, "symbols": ",".join(cfg.data.universe)}
    tags |= {"seeds": ",".join(map(str, cfg.train.seeds)), "data_hash": study_digest(folds)}
    runs = tracking.StudyRuns(root, cfg.experiment, flatten(cfg.to_dict()), tags, root / args.run_file)
    outcomes = train_groups(cfg, folds, keyed_folders({"policy": out}), runs.hooks, only=["policy"])

    groups: dict[str, dict[str, dict]] = {}
    for unit, outcome in sorted(outcomes.items()):
        groups.setdefault(unit.group, {})[str(unit.seed)] = outcome.summary()
    metrics = {
        group: {"seeds": seeds, "best_val_sharpe": distribution([s["best_val_sharpe"] for s in seeds.values()])}
        for group, seeds in groups.items()
    }
    write_json(root / args.metrics, metrics)  # deterministic: timings go to MLflow only
    plot_history({unit.name: o.result.history for unit, o in sorted(outcomes.items())}, out / HISTORY_PLOT)
    runs.parent.log_artifact(out / HISTORY_PLOT, "train")
    runs.parent.log_artifact(root / args.params, "train")
    for symbol in cfg.data.universe:
        quality = root / args.raw / symbol / "quality.json"
        if quality.exists():
            runs.parent.log_artifact(quality, f"data/{symbol}")


if __name__ == "__main__":
    run_stage(main)
