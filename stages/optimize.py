"""Optimize: Optuna search over training hyper-parameters on a shared storage, trained by worker processes.

Not part of ``dvc repro``. This command creates the study (or finds it), opens or reopens the study's MLflow run,
starts ``--workers`` worker processes (this command with ``--worker I``), waits, and writes the study summary. Run
the same command on other machines with the same ``--storage`` and ``MLFLOW_TRACKING_URI`` to add workers; create
the study once first (``--create-only``) when several machines start together on a fresh database.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import torch

from diffquant import hpo, tracking
from diffquant.config import Config, flatten
from diffquant.errors import DiffQuantError
from diffquant.train.policy_training import TrainingData
from stages._cli import load_params, one_asset, parser, repo_root, run_stage, write_json

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
    """The study's MLflow run, created with the study and found again by every later command and worker."""
    run_id = study.user_attrs.get(hpo.PARENT_RUN_ATTR)
    if run_id is None:
        tags = {"optuna_study": study.study_name, "optuna_storage": hpo.storage_kind(storage), "stage": "optimize"}
        run = tracking.start_run(root, f"optimize-{study.study_name}", tags)
        run.log_params(flatten(cfg.to_dict()))
        study.set_user_attr(hpo.PARENT_RUN_ATTR, run.run_id)
        return run
    try:
        return tracking.open_run(root, run_id)
    except tracking.TrackingError:
        raise tracking.TrackingError(
            f"study '{study.study_name}' logs into MLflow run {run_id}, which is not in {tracking.tracking_uri(root)}: "
            "set MLFLOW_TRACKING_URI to the server the study was created with, or start a new --study-name"
        ) from None


def _setup(args: argparse.Namespace, cfg: Config, root: Path) -> dict:
    return hpo.setup(cfg, args.epochs, [root / args.split / "train.npz", root / args.split / "val.npz"])


def _worker(args: argparse.Namespace, cfg: Config, root: Path, storage: optuna.storages.BaseStorage) -> None:
    torch.set_num_threads(1)  # workers share the machine's cores; more threads per worker only contend
    sampler = hpo.make_sampler(cfg.seed, args.worker)
    study = hpo.load_study(storage, args.study_name, sampler, hpo.make_pruner(cfg.optimize.pruner_warmup_epochs))
    hpo.check_setup(study, _setup(args, cfg, root))
    parent = _parent_run(root, study, args.storage, cfg)
    data = TrainingData.load(root / args.split)
    label = f"{socket.gethostname()}/{args.worker}/{os.getpid()}"
    ran = hpo.run_worker(study, args.trials, hpo.TrialObjective(cfg, data, args.epochs, parent, label))
    log.info("worker %s ran %d trial(s)", label, ran)


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--split", default="data_source/split", help="train.npz and val.npz from the split stage")
    p.add_argument("--out", default="outputs/optimize", help="summary.json goes here")
    p.add_argument("--trials", type=_positive, help="finished trials the study aims at (default optimize.trials)")
    p.add_argument("--workers", type=_positive, help="worker processes to start here (default optimize.workers)")
    p.add_argument("--storage", help="journal file path or SQLAlchemy URL (default optimize.storage)")
    p.add_argument("--study-name", help="default optimize.study_name, else the experiment name")
    p.add_argument("--epochs", type=_positive, help="training epochs per trial (default optimize.epochs)")
    p.add_argument("--write-params", action="store_true", help="write the best trial's params into --params")
    p.add_argument("--create-only", action="store_true", help="create the study and its MLflow run, then exit")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set on the processes this command starts
    args = p.parse_args(argv)
    root = repo_root()
    cfg = one_asset(load_params(args.params))
    o = cfg.optimize
    args.trials = args.trials or o.trials
    args.storage = args.storage or o.storage
    args.study_name = args.study_name or o.study_name or cfg.experiment
    args.epochs = args.epochs or o.epochs or cfg.train.epochs
    storage = hpo.open_storage(args.storage, root)
    if args.worker is not None:
        _worker(args, cfg, root, storage)
        return

    tracking.check_reachable(tracking.tracking_uri(root))
    TrainingData.load(root / args.split)  # a missing split fails here, not once per worker
    study = hpo.create_study(storage, args.study_name)
    hpo.check_setup(study, _setup(args, cfg, root))
    parent = _parent_run(root, study, args.storage, cfg)
    if args.create_only:
        log.info("study '%s' ready in %s; MLflow run %s", args.study_name, args.storage, parent.run_id)
        return

    workers = args.workers or o.workers
    command = [
        sys.executable,
        "-m",
        "stages.optimize",
        "--params",
        args.params,
        "--split",
        args.split,
        "--trials",
        str(args.trials),
        "--storage",
        args.storage,
        "--study-name",
        args.study_name,
        "--epochs",
        str(args.epochs),
    ]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*command, "--worker", str(i)]) for i in range(workers)]  # same cwd and env
    codes = [proc.wait() for proc in procs]
    seconds = time.perf_counter() - t0

    summary = {
        **hpo.summarize(study),
        "storage_kind": hpo.storage_kind(args.storage),
        "objective": "val Sharpe of the checkpoint the trainer selects (train.select_min_rebalances rule)",
        "epochs_per_trial": args.epochs,
        "search_space": {d.key: [d.low, d.high, "log" if d.log else "uniform"] for d in hpo.search_space(cfg)},
        "workers_here": workers,
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
        "study '%s': %d trials (%d complete, %d pruned, %d failed) in %.1f s here; best val Sharpe %s (trial %s)",
        args.study_name,
        summary["n_trials"],
        summary["n_complete"],
        summary["n_pruned"],
        summary["n_failed"],
        seconds,
        summary["best_value"],
        summary["best_trial"],
    )
    failed = [f"worker {i}: exit {c}" for i, c in enumerate(codes) if c]
    if failed:
        raise DiffQuantError(f"{', '.join(failed)}; the log lines above say why (summary.json is written)")
    if args.write_params:
        if not summary["best_params"]:
            raise DiffQuantError("--write-params: the study has no complete trial yet; nothing written")
        # the trials tried are part of the result: the deflated Sharpe ratio in evaluate counts them
        hpo.write_params(root / args.params, {**summary["best_params"], "eval.prior_trials": summary["n_trials"]})
        log.info(
            "wrote the best params of trial %d and eval.prior_trials = %d into %s",
            summary["best_trial"],
            summary["n_trials"],
            args.params,
        )


if __name__ == "__main__":
    run_stage(main)
