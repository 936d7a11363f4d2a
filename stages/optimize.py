"""Optimize: Optuna search over training hyper-parameters on a shared storage, its trials trained by the grid runner.

Not part of ``dvc repro``. This command creates the study (or finds it), opens or reopens the study's MLflow run,
then runs rounds of ``--workers`` trials through the grid runner (one after another here, ``--workers`` local
processes, or a Ray cluster with ``--grid-address``) until the study holds ``--trials``, and writes the study
summary. Another command with the same ``--storage`` and ``MLFLOW_TRACKING_URI`` (on this machine or another)
adds its trials to the same study; create the study once first (``--create-only``) when several start together on a
fresh database.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import time
from pathlib import Path

import optuna

from diffquant import search, tracking
from diffquant.config import Config, flatten
from diffquant.errors import DiffQuantError
from diffquant.study.fold_data import newest_cut
from diffquant.train.policy_training import TrainingData
from stages._cli import add_grid_address, load_params, one_asset, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.optimize")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _parent_run(root: Path, study: optuna.Study, storage: str, cfg: Config) -> tracking.Run:
    """The study's MLflow run, created with the study and found again by every later command."""
    run_id = study.user_attrs.get(search.PARENT_RUN_ATTR)
    if run_id is None:
        tags = {"optuna_study": study.study_name, "optuna_storage": search.storage_kind(storage), "stage": "optimize"}
        run = tracking.start_run(root, f"optimize-{study.study_name}", tags)
        run.log_params(flatten(cfg.to_dict()))
        study.set_user_attr(search.PARENT_RUN_ATTR, run.run_id)
        return run
    try:
        return tracking.open_run(root, run_id)
    except tracking.TrackingError:
        raise tracking.TrackingError(
            f"study '{study.study_name}' logs into MLflow run {run_id}, which is not in {tracking.tracking_uri(root)}: "
            "set MLFLOW_TRACKING_URI to the server the study was created with, or start a new --study-name"
        ) from None


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--split", default="data_source/split", help="the split stage's folds: the newest one's train, val")
    p.add_argument("--out", default="outputs/optimize", help="summary.json goes here")
    p.add_argument("--trials", type=_positive, help="trials the study aims at (default optimize.trials)")
    p.add_argument("--workers", type=_positive, help="trials trained at once (default optimize.workers)")
    add_grid_address(p)
    p.add_argument("--storage", help="journal file path or SQLAlchemy URL (default optimize.storage)")
    p.add_argument("--study-name", help="default optimize.study_name, else the experiment name")
    p.add_argument("--epochs", type=_positive, help="training epochs per trial (default optimize.epochs)")
    p.add_argument("--write-params", action="store_true", help="write the best trial's params into --params")
    p.add_argument("--create-only", action="store_true", help="create the study and its MLflow run, then exit")
    args = p.parse_args(argv)
    root = repo_root()
    cfg = one_asset(load_params(args.params, grid_address=args.grid_address))
    o = cfg.optimize
    trials = args.trials or o.trials
    storage_url = args.storage or o.storage
    name = args.study_name or o.study_name or cfg.experiment
    epochs = args.epochs or o.epochs or cfg.train.epochs
    storage = search.open_storage(storage_url, root)

    tracking.check_reachable(tracking.tracking_uri(root))
    cut = newest_cut(root / args.split, cfg.data.universe[0])
    data = TrainingData.load(cut)
    study = search.create_study(storage, name)
    search.check_setup(study, search.setup(cfg, epochs, [cut / "train.npz", cut / "val.npz"]))
    parent = _parent_run(root, study, storage_url, cfg)
    if args.create_only:
        log.info("study '%s' ready in %s; MLflow run %s", name, storage_url, parent.run_id)
        return

    workers = args.workers or o.workers
    study = search.load_study(storage, name, search.make_sampler(cfg.seed), search.make_pruner(o.pruner_warmup_epochs))
    label = f"{socket.gethostname()}/{os.getpid()}"
    t0 = time.perf_counter()
    try:
        ran = search.run_search(study, cfg, data, trials, epochs, parent, label, workers)
    finally:
        seconds = time.perf_counter() - t0
        summary = {
            **search.summarize(study),
            "storage_kind": search.storage_kind(storage_url),
            "objective": "val Sharpe of the checkpoint the trainer selects (train.select_min_rebalances rule)",
            "epochs_per_trial": epochs,
            "search_space": {d.key: [d.low, d.high, "log" if d.log else "uniform"] for d in search.search_space(cfg)},
            "trials_at_once_here": workers,
            "wall_seconds_here": round(seconds, 2),
            "mlflow_run_id": parent.run_id,
        }
        write_json(root / args.out / "summary.json", summary)
        counts = ("n_trials", "n_complete", "n_pruned", "n_failed", "best_value")
        parent.log_metrics({k: summary[k] for k in counts}, step=summary["n_trials"])
        parent.log_metrics(summary["best_params"], step=summary["n_trials"], prefix="best.")
        parent.log_artifact(root / args.out / "summary.json", "optimize")
        parent.finish()
    log.info(
        "study '%s': %d trials (%d complete, %d pruned, %d failed), %d run here in %.1f s; best val Sharpe %s "
        "(trial %s)",
        name,
        summary["n_trials"],
        summary["n_complete"],
        summary["n_pruned"],
        summary["n_failed"],
        ran,
        seconds,
        summary["best_value"],
        summary["best_trial"],
    )
    if args.write_params:
        if not summary["best_params"]:
            raise DiffQuantError("--write-params: the study has no complete trial yet; nothing written")
        # the trials tried are part of the result: the deflated Sharpe ratio in evaluate counts them
        search.write_params(root / args.params, {**summary["best_params"], "eval.prior_trials": summary["n_trials"]})
        log.info(
            "wrote the best params of trial %d and eval.prior_trials = %d into %s",
            summary["best_trial"],
            summary["n_trials"],
            args.params,
        )


if __name__ == "__main__":
    run_stage(main)
