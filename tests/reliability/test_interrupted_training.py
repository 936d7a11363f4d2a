"""A training process killed mid-run (SIGKILL, no chance to clean up) and restarted with ``dvc repro`` must resume
from its last epoch checkpoint, end with the metrics of an uninterrupted run, and leave MLflow with one parent run
and one run per seed whose per-epoch history has every epoch exactly once.

Faults injected: SIGKILL of ``python -m stages.train`` once the second seed's ``last.pt`` holds epoch >= 1 and
before its last epoch (the first seed is complete); then the epoch of that ``last.pt`` is deleted from the MLflow
store, as if the kill had landed between saving the checkpoint and logging its epoch (a real window: the trainer
saves first, the stage logs after).
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from diffquant.evaluate.metric_names import study_metric
from diffquant.train import checkpoint
from tests.repo_copy import client, clone_tree, commit, dvc, env, read_json, runs, tiny_params

pytestmark = pytest.mark.slow

EPOCHS = 6
# Batches of 4 make an epoch take ~0.5 s on 2 CPU cores (~30 optimiser steps): long enough to kill mid-run.
SEEDS = (42, 43)
PARAMS = tiny_params(train={"epochs": EPOCHS, "batch_size": 4, "seeds": list(SEEDS)})
HISTORY_KEYS = ("train_loss", "lr", "train_sharpe_per_bar")


def _with_params(repo: Path) -> Path:
    (repo / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    commit(repo, "kill-test params")
    return repo


def _epoch_of(path: Path) -> int:
    """Epoch in a ``last.pt`` being rewritten (atomically) by the trainer; 0 while none is readable yet."""
    try:
        return int(checkpoint.load(path)["epoch"])
    except checkpoint.CheckpointError:
        return 0


def _seed_dir(repo: Path, seed: int) -> Path:
    """Where the train stage keeps ``seed`` of the (one) pooled group: ``outputs/train/pooled/<digest>/seed_<s>``; a
    path that does not exist yet while the group's folder is not made."""
    found = sorted((repo / "outputs" / "train" / "pooled").glob(f"*/seed_{seed}"))
    return found[0] if found else repo / "outputs" / "train" / "pooled" / "-" / f"seed_{seed}"


def _kill_mid_run(repo: Path, timeout_s: float = 180) -> int:
    """Start the train stage and SIGKILL it once the last seed's ``last.pt`` shows an epoch in [1, EPOCHS); the epoch
    it left."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.train"],
        cwd=repo,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout_s
    try:
        while _epoch_of(_seed_dir(repo, SEEDS[-1]) / "last.pt") < 1:
            if proc.poll() is not None:
                pytest.fail(f"train exited ({proc.returncode}) before its first epoch:\n{proc.stderr.read()[-3000:]}")
            assert time.monotonic() < deadline, f"no epoch checkpoint in {repo}/outputs/train after {timeout_s} s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"train was not killed but exited with {proc.returncode}"
    done = _epoch_of(_seed_dir(repo, SEEDS[-1]) / "last.pt")
    assert 1 <= done < EPOCHS, f"the kill landed after the last epoch ({done}); make epochs slower"
    return done


def _forget_epoch(repo: Path, run_id: str, epoch: int) -> None:
    """Delete one epoch's per-epoch metrics from the sqlite store (the kill-between-save-and-log window)."""
    with sqlite3.connect(repo / "mlruns" / "mlflow.db") as db:
        db.execute("DELETE FROM metrics WHERE run_uuid = ? AND step = ?", (run_id, epoch))


def _history(repo: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(repo).get_metric_history(run_id, key))


def test_killed_training_resumes_and_matches_an_uninterrupted_run(prepared: Path, tmp_path: Path) -> None:
    killed = _with_params(clone_tree(prepared, tmp_path / "killed"))
    done = _kill_mid_run(killed)
    (cut,) = [r for r in runs(killed, "policy_seed") if r.data.tags["seed"] == str(SEEDS[-1])]
    _forget_epoch(killed, cut.info.run_id, done)

    out = dvc("repro", cwd=killed)
    last, first = (_seed_dir(killed.resolve(), s) / "last.pt" for s in (SEEDS[-1], SEEDS[0]))
    assert f"resuming from {last} after epoch {done}" in out, out[-3000:]
    assert f"resuming from {first} after epoch {EPOCHS}" in out, out[-3000:]

    clean = _with_params(clone_tree(prepared, tmp_path / "clean"))
    dvc("repro", cwd=clean)

    for name in ("train.json", "proxy.json", "thresholds.json", "evaluate.json"):
        assert read_json(killed / "outputs/metrics" / name) == read_json(clean / "outputs/metrics" / name), name
    for seed in SEEDS:
        for name in ("best.pt", "final.pt"):
            a, b = (checkpoint.load(_seed_dir(r, seed) / name)["model_state"] for r in (killed, clean))
            assert all(torch.equal(a[k], b[k]) for k in b), (seed, name)

    (parent,) = runs(killed, "study")  # one parent: the restart continued the killed one, opened no second
    (ref,) = runs(clean, "study")
    assert parent.info.run_id == read_json(killed / "outputs/mlflow_run.json")["run_id"]
    assert parent.info.status == "FINISHED" and study_metric("universe", "policy", "sharpe") in parent.data.metrics
    assert parent.data.metrics.keys() == ref.data.metrics.keys()
    children = {r.data.tags["seed"]: r for r in runs(killed, "policy_seed")}
    references = {r.data.tags["seed"]: r for r in runs(clean, "policy_seed")}
    assert sorted(children) == sorted(references) == [str(s) for s in SEEDS]
    assert children[str(SEEDS[-1])].data.metrics["resumed_after_epoch"] == done
    for seed, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        for key in HISTORY_KEYS:
            got = _history(killed, run.info.run_id, key)
            assert [s for s, _ in got] == list(range(1, EPOCHS + 1)), f"seed {seed} {key}: steps {got}"
            assert got == _history(clean, references[seed].info.run_id, key), (seed, key)
        val = [s for s, _ in _history(killed, run.info.run_id, "val_sharpe")]
        assert val == [s for s, _ in _history(clean, references[seed].info.run_id, "val_sharpe")] == [2, 4, 6]
        assert run.data.metrics.keys() == references[seed].data.metrics.keys()
