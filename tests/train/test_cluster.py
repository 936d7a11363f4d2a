"""The grid on many machines, against a real PostgreSQL server: two worker processes (``python -m
stages.grid_worker``) and the coordinator share one grid; the worker killed mid-unit has its unit taken up again
and resumed; every unit completes exactly once; the models equal a 1-worker run's; a unit that raises is reported
with its error, not retried forever."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from diffquant.compute.grid import GridError, run_grid
from diffquant.errors import ConfigError
from diffquant.train import checkpoint
from diffquant.train.cluster import Cluster, grid_name, run_on_cluster, submit
from tests.postgres import postgres
from tests.repo_copy import REPO
from tests.train.grid_units import tiny_works
from tests.train.test_grid import Recorder

pytestmark = pytest.mark.slow  # a PostgreSQL server, worker processes and real (tiny) training


def _worker(url: str, jobs: Path) -> subprocess.Popen:
    args = ["--storage", url, "--jobs", str(jobs), "--heartbeat", "1", "--grace", "3", "--linger", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "stages.grid_worker", *args], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
    )


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(folder / "final.pt")["model_state"]


def test_two_workers_and_a_killed_one_train_every_unit_once_as_one_worker_would(tmp_path: Path) -> None:
    seeds = [1, 2, 3, 4]
    reference = tiny_works(tmp_path / "reference", seeds, epochs=3, samples=512)
    run_grid(reference, lambda u: Recorder([], "ref"), reference[0].cfg.train)
    works = tiny_works(tmp_path / "shared", seeds, epochs=3, samples=512)
    with postgres() as url:
        cluster = Cluster(url, tmp_path / "jobs", heartbeat_s=1, grace_s=3, poll_s=0.2)
        grid = submit(cluster, works)
        study = optuna.load_study(study_name=grid, storage=url)
        doomed = _worker(url, cluster.jobs)
        victim = f"{socket.gethostname()}:{doomed.pid}"
        deadline = time.monotonic() + 120
        while not any(t.user_attrs.get("worker") == victim for t in study.get_trials(states=(TrialState.RUNNING,))):
            assert doomed.poll() is None and time.monotonic() < deadline, "the first worker never took a unit"
            time.sleep(0.1)
        doomed.kill()
        doomed.wait()
        helper = _worker(url, cluster.jobs)
        second = f"{socket.gethostname()}:{helper.pid}"
        while not any(t.user_attrs.get("worker") == second for t in study.get_trials()):
            assert helper.poll() is None and time.monotonic() < deadline + 120, "the second worker never took a unit"
            time.sleep(0.1)
        log: list = []
        outcomes = run_on_cluster(cluster, works, lambda u: Recorder(log, "g"))
        assert helper.wait(timeout=120) == 0, helper.stderr.read()[-3000:]

        trials = study.get_trials()
    complete = [t.user_attrs["unit"] for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == sorted(w.unit.name for w in works)  # every unit exactly once
    killed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.user_attrs["worker"] for t in killed] == [victim]
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert [t.state for t in retried] == [TrialState.COMPLETE]
    assert {victim, second} <= {t.user_attrs["worker"] for t in trials}  # and the coordinator, when it got one
    for work in works:
        a, b = _weights(work.folder), _weights(tmp_path / "reference" / work.folder.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), work.unit.name
        assert outcomes[work.unit].result.history == checkpoint.load(work.folder / "final.pt")["history"]
    assert [name for kind, name, _ in log if kind == "finished"] == [f"g/{s}" for s in seeds]


def test_a_unit_that_raises_is_reported_with_its_error(tmp_path: Path) -> None:
    works = tiny_works(tmp_path / "shared", [1], epochs=1)
    works[0].folder.mkdir(parents=True)
    (works[0].folder / "last.pt").mkdir()  # a folder where a checkpoint file must go: saving it raises
    with postgres() as url:
        cluster = Cluster(url, tmp_path / "jobs", heartbeat_s=1, grace_s=3, poll_s=0.2)
        with pytest.raises(GridError, match="grid unit policy/seed_1 failed: Traceback"):
            run_on_cluster(cluster, works, lambda u: Recorder([], "g"))
        assert [t.state for t in optuna.load_study(study_name=grid_name(works), storage=url).get_trials()] == [
            TrialState.FAIL
        ]


def test_a_journal_file_is_refused_with_what_to_use(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="name an SQL database"):
        Cluster("optuna.log", tmp_path).open()


def test_train_grid_storage_sends_the_units_of_any_stage_to_the_cluster(tmp_path: Path) -> None:
    """``run_grid`` with ``train.grid_storage`` (here sqlite, one machine): the coordinator alone trains the grid, as
    one in-process run would, and MLflow's hooks get every unit's epochs from its outcome."""
    reference = tiny_works(tmp_path / "reference", [1, 2], epochs=2)
    run_grid(reference, lambda u: Recorder([], "ref"), reference[0].cfg.train)
    works = tiny_works(tmp_path / "shared", [1, 2], epochs=2)
    train = dataclasses.replace(
        works[0].cfg.train, grid_storage=f"sqlite:///{tmp_path / 'grid.db'}", grid_jobs=str(tmp_path / "jobs")
    )
    log: list = []
    outcomes = run_grid(works, lambda u: Recorder(log, "g"), train)
    for work in works:
        a, b = _weights(work.folder), _weights(tmp_path / "reference" / work.folder.name)
        assert all(torch.equal(a[k], b[k]) for k in a), work.unit.name
    assert [(kind, value) for kind, name, value in log if name == "g/1"] == [
        ("started", 0),
        ("epoch", 1),
        ("epoch", 2),
        ("finished", 1),
    ]
    assert sorted(outcomes) == [w.unit for w in works]
    assert len(list((tmp_path / "jobs").glob("grid-*/*.outcome.pkl"))) == 2
