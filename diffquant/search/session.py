"""One search command's session: find (or create) the study and its MLflow run, run its trials here, summarize.

Several sessions on one storage (processes on this machine or others, each with ``MLFLOW_TRACKING_URI`` at the same
server) add trials to the same study; the study's MLflow run is created with the study and reopened by the others.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from diffquant import tracking
from diffquant.config import Config, flatten
from diffquant.io import write_json
from diffquant.search.objective import search_space
from diffquant.search.rounds import run_search
from diffquant.search.storage import (
    PARENT_RUN_ATTR,
    check_setup,
    create_study,
    load_study,
    make_pruner,
    make_sampler,
    open_storage,
    setup,
    storage_kind,
    summarize,
)
from diffquant.study.fold_data import newest_cut
from diffquant.train.policy_training import TrainingData

OBJECTIVE = "val Sharpe of the checkpoint the trainer selects (train.select_min_rebalances rule)"


@dataclass(frozen=True)
class SearchRequest:
    """The study a session works on and how much of it to run here (the command's options over ``optimize:``)."""

    storage: str  # a journal file path (relative to the project) or a SQLAlchemy URL
    name: str
    trials: int  # trials the study aims at, over every session
    workers: int  # trials trained at once here
    epochs: int  # per trial
    split: Path  # the split stage's folder: the newest fold's cut of the asset is trained and scored on
    summary: Path  # summary.json, written when the session ends (also on failure)


def parent_run(root: Path, study: optuna.Study, storage: str, cfg: Config) -> tracking.Run:
    """The study's MLflow run, created with the study and found again by every later session."""
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id is None:
        tags = {"optuna_study": study.study_name, "optuna_storage": storage_kind(storage), "stage": "optimize"}
        run = tracking.start_run(root, f"optimize-{study.study_name}", tags)
        run.log_params(flatten(cfg.to_dict()))
        study.set_user_attr(PARENT_RUN_ATTR, run.run_id)
        return run
    try:
        return tracking.open_run(root, run_id)
    except tracking.TrackingError:
        raise tracking.TrackingError(
            f"study '{study.study_name}' logs into MLflow run {run_id}, which is not in {tracking.tracking_uri(root)}: "
            "set MLFLOW_TRACKING_URI to the server the study was created with, or start a new --study-name"
        ) from None


def prepare_search(
    cfg: Config, root: Path, req: SearchRequest
) -> tuple[optuna.storages.BaseStorage, TrainingData, tracking.Run]:
    """The storage holding the study (created if new, checked against this session's params, epochs and data), the
    data its trials train on, and the study's MLflow run."""
    storage = open_storage(req.storage, root)
    tracking.check_reachable(tracking.tracking_uri(root))
    cut = newest_cut(req.split, cfg.data.universe[0])
    data = TrainingData.load(cut)
    study = create_study(storage, req.name)
    check_setup(study, setup(cfg, req.epochs, [cut / "train.npz", cut / "val.npz"]))
    return storage, data, parent_run(root, study, req.storage, cfg)


def search_session(cfg: Config, root: Path, req: SearchRequest) -> dict[str, Any]:
    """Run trials here until the study holds ``req.trials``; the summary (written, and logged on the study's run,
    whatever happened) with how many ran here."""
    storage, data, parent = prepare_search(cfg, root, req)
    study = load_study(storage, req.name, make_sampler(cfg.seed), make_pruner(cfg.optimize.pruner_warmup_epochs))
    t0, ran = time.perf_counter(), 0
    try:
        label = f"{socket.gethostname()}/{os.getpid()}"
        ran = run_search(study, cfg, data, req.trials, req.epochs, parent, label, req.workers)
    finally:
        summary = {
            **summarize(study),
            "storage_kind": storage_kind(req.storage),
            "objective": OBJECTIVE,
            "epochs_per_trial": req.epochs,
            "search_space": {d.key: [d.low, d.high, "log" if d.log else "uniform"] for d in search_space(cfg)},
            "trials_at_once_here": req.workers,
            "wall_seconds_here": round(time.perf_counter() - t0, 2),
            "mlflow_run_id": parent.run_id,
        }
        write_json(req.summary, summary)
        counts = ("n_trials", "n_complete", "n_pruned", "n_failed", "best_value")
        parent.log_metrics({k: summary[k] for k in counts}, step=summary["n_trials"])
        parent.log_metrics(summary["best_params"], step=summary["n_trials"], prefix="best.")
        parent.log_artifact(req.summary, "optimize")
        parent.finish()
    return {**summary, "ran_here": ran}
