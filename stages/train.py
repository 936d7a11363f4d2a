"""Train stage: fit one policy per seed in ``train.seeds`` on the train samples, validating by walk-forward on val.

Opens the experiment's MLflow parent run and one child run per seed; each seed's checkpoints go to
``<out>/seed_<seed>/``. A killed run restarted with the same params resumes the unfinished seed from its
``last.pt`` and continues the same MLflow runs, logging only the epochs they have not logged yet.
"""

from __future__ import annotations

from diffquant import tracking
from diffquant.config import flatten
from diffquant.evaluate.stats import distribution
from diffquant.model.policy import PolicyNetwork, count_parameters
from diffquant.plots import plot_history
from diffquant.sim.losses import Objective
from diffquant.train.layout import HISTORY_PLOT
from diffquant.train.policy_training import TrainingData, train_policies
from diffquant.train.trainer import resolve_device
from stages._cli import load_params, one_asset, parser, repo_root, run_stage, write_json


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, training=True)
    p.add_argument("--split", default="data_source/split")
    p.add_argument("--raw", default="data_source/raw", help="the download stage's folder: its quality report is logged")
    p.add_argument("--out", default="outputs/train")
    p.add_argument("--metrics", default="outputs/metrics/train.json")
    p.add_argument("--run-file", default="outputs/mlflow_run.json", help="where later stages find the MLflow runs")
    args = p.parse_args(argv)
    root, out = repo_root(), repo_root() / args.out
    cfg = one_asset(load_params(args.params, args.workers, args.grid_address))
    tracking.check_reachable(tracking.tracking_uri(root))  # fail before hours of training, not after
    data = TrainingData.load(root / args.split)

    tags = {"data_hash": data.digest, "seeds": ",".join(map(str, cfg.train.seeds))}
    child_params = {
        "objective": repr(Objective(cfg.loss, cfg.sim.smooth_abs_eps)),
        "device": str(resolve_device(cfg.train.device)),
    }
    runs = tracking.SeedRuns(
        root, cfg.experiment, "policy", flatten(cfg.to_dict()), tags, child_params, root / args.run_file
    )
    outcomes = train_policies(cfg, data, out, runs)
    parent = runs.parent

    plot_history({f"seed {s}": o.result.history for s, o in outcomes.items()}, out / HISTORY_PLOT)
    seeds = {str(s): o.summary() for s, o in outcomes.items()}
    metrics = {
        "seeds": seeds,
        "best_val_sharpe": distribution([s["best_val_sharpe"] for s in seeds.values()]),
        "epochs": cfg.train.epochs,
        "n_parameters": count_parameters(PolicyNetwork(cfg.model, len(data.samples.feature_names), cfg.window.context)),
        "n_train_samples": len(data.samples),
    }
    write_json(root / args.metrics, metrics)  # deterministic: timings go to MLflow only
    parent.log_metrics({f"best_val_sharpe_{k}": v for k, v in metrics["best_val_sharpe"].items()})
    parent.log_metrics({"n_parameters": metrics["n_parameters"], "n_train_samples": len(data.samples)})
    for path in (out / HISTORY_PLOT, root / args.params):
        parent.log_artifact(path, "train")
    quality = root / args.raw / cfg.data.universe[0] / "quality.json"
    if quality.exists():
        parent.log_artifact(quality, "data")


if __name__ == "__main__":
    run_stage(main)
