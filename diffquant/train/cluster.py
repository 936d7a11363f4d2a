"""The grid on many machines: every unit an enqueued trial of an Optuna study in a shared SQL database.

Optuna's RDB storage is the engine (docs/compute.md says why it, and not a task queue): a trial moves from
WAITING to RUNNING in one transaction, so two workers never take the same unit; a worker's heartbeat keeps its
trial alive, and a trial whose heartbeat stops (the worker was killed, its machine died) is failed by the next
worker that looks and enqueued again by ``RetryHeartbeatStaleTrialCallback``: it resumes from its last checkpoint.
A unit's work and its outcome travel as pickles in ``train.grid_jobs``, a folder every machine sees at the same
path, as it sees the project's outputs (the checkout on a shared file system).

One grid is one study, named by a hash of its works, so a coordinator that is run again finds its study and does
not train again the units that completed. The coordinator works on its own grid too; workers started with
``python -m stages.grid_worker`` serve every grid of the storage. This module imports optuna: the training path
reaches it only when ``train.grid_storage`` is set.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from diffquant.compute.grid import Event, GridError, HooksOf, execute, threads_per_worker
from diffquant.compute.units import Outcome, Unit, Work
from diffquant.data.contracts import atomic_path
from diffquant.errors import ConfigError
from diffquant.train.resume import code_hash

log = logging.getLogger(__name__)

PREFIX = "grid-"  # the studies that hold grids (an HPO study in the same database is left alone)
MAX_RETRY = 3  # a unit whose worker died this many times is reported, not retried again
LIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)


@dataclass(frozen=True)
class Cluster:
    storage: str  # SQLAlchemy URL: postgresql+psycopg2://user:pw@host/db (many machines) or sqlite:///f.db
    jobs: Path  # the shared folder of the units' work and outcomes
    heartbeat_s: int = 10
    grace_s: int = 60  # a RUNNING trial without a heartbeat for this long belongs to a dead worker
    poll_s: float = 1.0
    linger_s: float = 0.0  # a worker serving every grid waits this long for new units once none is left
    local_workers: int = 1  # worker processes on this machine: a unit's threads are train.threads or their share

    def open(self) -> optuna.storages.RDBStorage:
        if "://" not in self.storage:
            raise ConfigError(
                f"train.grid_storage {self.storage!r}: name an SQL database (postgresql+psycopg2://user:pw@host/db, "
                "or sqlite:///grid.db on one machine); the grid's heartbeats need one"
            )
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():  # heartbeats are marked experimental since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                self.storage,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=self.heartbeat_s,
                grace_period=self.grace_s,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )


def grid_name(works: Sequence[Work]) -> str:
    """The study of this grid: a hash of every unit's pickled work (config, data, folder) and the code."""
    h = hashlib.sha256(code_hash().encode())
    for work in works:
        h.update(pickle.dumps(work))
    return PREFIX + h.hexdigest()[:16]


def submit(cluster: Cluster, works: Sequence[Work]) -> str:
    """Create the grid's study (or find it again) and enqueue every unit that is not done, waiting or running."""
    storage, name = cluster.open(), grid_name(works)
    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True)
    live = {t.user_attrs.get("unit") for t in study.get_trials(deepcopy=False, states=LIVE)}
    for work in works:
        if work.unit.name in live:
            continue
        job = job_path(cluster, name, work.unit)
        job.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(job) as tmp:
            tmp.write_bytes(pickle.dumps(work))
        study.enqueue_trial({}, user_attrs={"unit": work.unit.name, "job": str(job), "code": code_hash()})
    log.info("grid %s: %d units, %d of them done, waiting or running", name, len(works), len(live))
    return name


def job_path(cluster: Cluster, grid: str, unit: Unit) -> Path:
    """Where a unit's pickled work lies (absolute: workers in other folders read the same path)."""
    return cluster.jobs.resolve() / grid / f"{unit.name.replace('/', '.')}.pkl"


def outcome_path(job: str | Path) -> Path:
    return Path(job).with_suffix(".outcome.pkl")


def serve(cluster: Cluster, grid: str | None = None) -> int:
    """Train units of the grid studies until ``grid`` is complete (or, with None, until no grid has had a unit
    waiting or running for ``linger_s``); the number of units this process trained. ``GridError`` when a unit of
    ``grid`` failed."""
    storage = cluster.open()
    worker, done, idle_since = f"{socket.gethostname()}:{os.getpid()}", 0, time.monotonic()
    while True:
        names = [s.study_name for s in storage.get_all_studies() if s.study_name.startswith(PREFIX)]
        names = [n for n in names if grid is None or n == grid]
        for name in names:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(optuna.load_study(study_name=name, storage=storage))
        ids = [storage.get_study_id_from_name(n) for n in names]
        taken = next((t for i in ids if (t := _pop(storage, i)) is not None), None)
        if taken is not None:
            _train(cluster, storage, *taken, worker)
            done, idle_since = done + 1, time.monotonic()
            continue
        if grid is not None and _complete(storage, ids[0]):
            return done
        busy = any(
            storage.get_all_trials(i, deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)) for i in ids
        )
        if grid is None and not busy and time.monotonic() - idle_since >= cluster.linger_s:
            return done
        time.sleep(cluster.poll_s)


def _pop(storage: optuna.storages.RDBStorage, study_id: int) -> tuple[int, dict[str, Any]] | None:
    """Take a waiting trial (WAITING -> RUNNING is one transaction: no other worker gets it)."""
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                return trial_id, dict(trial.user_attrs)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def _train(cluster: Cluster, storage: Any, trial_id: int, attrs: dict[str, Any], worker: str) -> None:
    """Train one unit under a heartbeat; its outcome goes next to its job, the trial to COMPLETE (or FAIL with the
    error). A kill leaves the trial RUNNING without heartbeat: the next worker fails it and enqueues it again."""
    storage.record_heartbeat(trial_id)
    storage.set_trial_user_attr(trial_id, "worker", worker)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(cluster.heartbeat_s):
            storage.record_heartbeat(trial_id)

    threading.Thread(target=beat, daemon=True).start()
    try:
        if attrs["code"] != code_hash():
            raise GridError(f"unit {attrs['unit']}: this worker's code is not the coordinator's; check out its commit")
        work: Work = pickle.loads(Path(attrs["job"]).read_bytes())
        torch.set_num_threads(threads_per_worker(work.cfg.train, cluster.local_workers))
        events: list[Event] = []
        log.info("worker %s: training %s", worker, attrs["unit"])
        execute(work, events.append, progress=False)
        outcome = events[-1][2]
        with atomic_path(outcome_path(attrs["job"])) as tmp:
            tmp.write_bytes(pickle.dumps(outcome))
        storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [outcome.seconds])
    except Exception:
        storage.set_trial_user_attr(trial_id, "error", traceback.format_exc()[-4000:])
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        log.exception("worker %s: unit %s failed", worker, attrs["unit"])
    finally:
        stop.set()


def _complete(storage: Any, study_id: int) -> bool:
    """Whether every unit of the grid has completed; ``GridError`` for a unit that failed and is not retried."""
    trials = storage.get_all_trials(study_id, deepcopy=False)
    by_unit: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in trials:
        by_unit.setdefault(t.user_attrs["unit"], []).append(t)
    for unit, attempts in by_unit.items():
        if any(t.state in LIVE for t in attempts):
            continue
        errors = [t.user_attrs["error"] for t in attempts if "error" in t.user_attrs]
        why = errors[-1] if errors else f"its worker died {len(attempts)} times"
        raise GridError(f"grid unit {unit} failed: {why}")
    return all(any(t.state == TrialState.COMPLETE for t in attempts) for attempts in by_unit.values())


def run_on_cluster(cluster: Cluster, works: Sequence[Work], hooks_of: HooksOf) -> dict[Unit, Outcome]:
    """Enqueue the grid, train on it here (other machines' workers join in), then report every unit's outcome to
    its hooks: started, each epoch of its history, finished (MLflow is written here, after the fact)."""
    grid = submit(cluster, works)
    serve(cluster, grid)
    outcomes: dict[Unit, Outcome] = {}
    for work in works:
        outcome: Outcome = pickle.loads(outcome_path(job_path(cluster, grid, work.unit)).read_bytes())
        hooks, seed = hooks_of(work.unit), work.unit.seed
        hooks.started(seed, [])
        for record in outcome.result.history:
            hooks.epoch(seed, record)
        hooks.finished(seed, outcome)
        outcomes[work.unit] = outcome
    return outcomes
