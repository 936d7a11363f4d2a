"""The grid runner in this process and on the local pool: two worker processes train exactly the one-worker models
(a walk-forward study on real bars, byte for byte), every unit reports started -> its epochs -> finished to its own
hooks, a failing unit raises its own error after the running units finish, a worker killed by the OS fails only its
own unit, by name, each unit trains with its own thread count (resolved by the driver), CUDA workers see one GPU
each, and the training path imports and runs without mlflow, dvc, optuna or ray."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from diffquant.compute.grid import available_cores, run_grid, unit_threads, with_unit_threads
from diffquant.compute.reporting import GridError
from diffquant.config import Config, TrainConfig
from diffquant.folds import plan_folds
from diffquant.study.fold_data import fold_data
from diffquant.study.fold_result import FOLD_JSON
from diffquant.study.fold_run import run_folds
from diffquant.train import checkpoint
from tests.compute.grid_units import Recorder, Stopper, scripted, tiny_config, tiny_works
from tests.repo_copy import REPO
from tests.study.test_fold_run import raw_until, tables, tiny

TWO = TrainConfig(workers=2, device="cpu")


def study(cfg: Config, out: Path, hooks: Any = None) -> list[tuple[str, str, Any]]:
    """A two-fold walk-forward study of ``cfg`` on real BTC/ETH bars into ``out``; every hook call, in order."""
    raws = {s: raw_until(s, "2024-06-02") for s in cfg.data.universe}
    t = tables(cfg, raws)
    log: list[tuple[str, str, Any]] = []
    folds = [(fold_data(f, t, cfg), out / f.name) for f in plan_folds(cfg.folds, cfg.split)]
    run_folds(cfg, folds, hooks or (lambda fold, group, kind: Recorder(log, f"{fold}/{group}/{kind}")))
    return log


def assert_same_files(a: Path, b: Path) -> int:
    """Every model file and ``fold.json`` under ``a`` has the same bytes under ``b``; how many were compared."""
    files = sorted(p for p in a.rglob("*") if p.is_file() and (p.name == FOLD_JSON or "models" in p.parts))
    assert sorted(p.relative_to(a) for p in files) == sorted(
        p.relative_to(b) for p in b.rglob("*") if p.is_file() and (p.name == FOLD_JSON or "models" in p.parts)
    )
    for path in files:
        assert path.read_bytes() == (b / path.relative_to(a)).read_bytes(), path.relative_to(a)
    return len(files)


@pytest.mark.slow  # two small studies, one of them on two spawned workers
def test_two_workers_train_the_one_worker_models_and_report_each_unit_in_order(tmp_path: Path) -> None:
    cfg = tiny(**{"train.seeds": [3, 4], "train.epochs": 2})  # train.threads: 1 per unit, in both runs
    one = study(cfg, tmp_path / "one")
    two = study(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, workers=2)), tmp_path / "two")

    assert len(list((tmp_path / "one").glob(f"*/{FOLD_JSON}"))) == 2
    assert len(list((tmp_path / "one").glob("*/models/*/*/seed_*/*.pt"))) == 2 * 2 * 2 * 3  # folds, kinds, seeds
    assert assert_same_files(tmp_path / "one", tmp_path / "two") > 2 * 2 * 2 * 3
    units = {name for kind, name, _ in one if kind == "started"}
    assert len(units) == 2 * 2 * 2  # folds x kinds x seeds
    for log in (one, two):
        for unit in units:
            calls = [(kind, value) for kind, name, value in log if name == unit]
            assert calls == [("started", 0), ("epoch", 1), ("epoch", 2), ("finished", int(unit[-1]))], unit


def test_a_failing_unit_raises_its_own_error_after_the_running_units_finish() -> None:
    log: list[tuple[str, str, Any]] = []
    works = scripted([1], ending="raise") + scripted([2], seconds=1.0) + scripted(range(3, 9))
    with pytest.raises(ValueError, match="policy/seed_1 is broken") as raised:
        run_grid(works, lambda unit: Recorder(log, "g"), TWO)
    assert "raised while training unit policy/seed_1" in raised.value.__notes__
    assert ("failed", "g/1", "ValueError") in log
    assert ("finished", "g/2", 2) in log  # it was running: it finished and was reported
    started = {name for kind, name, _ in log if kind == "started"}
    ended = {name for kind, name, _ in log if kind in ("finished", "failed")}
    assert started == ended and len(started) < len(works)  # nothing left hanging; units not yet started never were


def test_a_worker_killed_by_the_os_fails_only_its_own_unit_by_name(tmp_path: Path) -> None:
    log: list[tuple[str, str, Any]] = []
    works = [dataclasses.replace(w, unit=dataclasses.replace(w.unit, group="q1/pooled")) for w in scripted([1])]
    doomed = dataclasses.replace(works[0], seconds=0.3, ending="die")
    others = [  # seed 2 is still training when seed 1's worker dies beside it
        dataclasses.replace(doomed, unit=dataclasses.replace(doomed.unit, seed=s), seconds=2.0, ending="finish")
        for s in (2, 3, 4, 5)
    ]
    with pytest.raises(GridError, match=r"q1/pooled/policy/seed_1; 4 other unit\(s\) finished") as raised:
        run_grid([doomed, *others], lambda unit: Recorder(log, "g"), TWO)
    assert "killed by signal 9" in str(raised.value)
    assert [(kind, value) for kind, name, value in log if name == "g/1"] == [("started", 0), ("failed", "WorkerDied")]
    assert sorted(name for kind, name, _ in log if kind == "finished") == [f"g/{s}" for s in (2, 3, 4, 5)]


def test_units_run_side_by_side_in_separate_processes_with_their_own_threads(tmp_path: Path) -> None:
    works = scripted(range(4), threads=1, meet=str(tmp_path)) + scripted([4], threads=2)
    outcomes = run_grid(works, lambda unit: Recorder([], "g"), TWO)
    assert sorted(outcomes) == [w.unit for w in works]
    assert all(outcomes[w.unit].seed == w.unit.seed for w in works)
    pids = {o.pid for o in outcomes.values()}
    assert len(pids) == 2 and os.getpid() not in pids
    assert [outcomes[w.unit].threads for w in works] == [1, 1, 1, 1, 2]  # the unit's count, not the worker's


@pytest.mark.parametrize("workers", [1, 2])
def test_a_hook_stops_its_unit_without_failing_the_grid(tmp_path: Path, workers: int) -> None:
    log: list[tuple[str, str, Any]] = []
    works = tiny_works(tmp_path, [1, 2], epochs=3)
    hooks = Stopper(log, "g", seed=1, at=1)
    outcomes = run_grid(works, lambda unit: hooks, dataclasses.replace(works[0].cfg.train, workers=workers))
    assert sorted(u.seed for u in outcomes) == [2]
    assert [(kind, value) for kind, name, value in log if name == "g/1"] == [("started", 0), ("epoch", 1)]
    assert [kind for kind, name, _ in log if name == "g/2"] == ["started", "epoch", "epoch", "epoch", "finished"]
    stopped = checkpoint.load(works[0].folder / "last.pt")["epoch"]
    assert stopped == 1 if workers == 1 else stopped <= 2  # in-process at once; a worker at its next epoch
    assert not (works[0].folder / "final.pt").exists()


def test_the_driver_resolves_the_thread_count_and_the_runner_refuses_a_unit_without_one(tmp_path: Path) -> None:
    one, four = TrainConfig(threads=0, workers=1), TrainConfig(threads=0, workers=4)
    assert unit_threads(one) == torch.get_num_threads()  # torch's default in this process (the stages' before)
    assert unit_threads(four) == max(1, available_cores() // 4)
    assert unit_threads(dataclasses.replace(four, threads=3)) == 3
    cfg = tiny_config([1])
    unresolved = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=0))
    assert with_unit_threads(unresolved).train.threads == torch.get_num_threads()
    works = [dataclasses.replace(w, cfg=unresolved) for w in tiny_works(tmp_path, [1])]
    with pytest.raises(ValueError, match=r"train\.threads is 0 for policy/seed_1: resolve it in the driver"):
        run_grid(works, lambda unit: Recorder([], "g"), unresolved.train)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_each_cuda_worker_sees_one_gpu() -> None:
    n = torch.cuda.device_count()
    cfg = TrainConfig(workers=max(2, n), device="cuda")
    outcomes = run_grid(scripted(range(2 * cfg.workers), seconds=0.5, device="cuda"), lambda u: Recorder([], "g"), cfg)
    seen = {o.gpu for o in outcomes.values()}
    assert all(g.endswith(":1") for g in seen)  # one visible device per worker
    assert {g.split(":")[0] for g in seen} == {str(i) for i in range(min(n, cfg.workers))}


BLOCKED = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("mlflow", "dvc", "optuna", "ray"):
            raise ImportError(f"{name} is blocked: the training path must not need it")
sys.meta_path.insert(0, Block())
"""

TRAIN_WITHOUT_THEM = (
    BLOCKED
    + """
import tempfile
from pathlib import Path
from diffquant.compute.grid import run_grid
from diffquant.compute.units import QuietHooks
from diffquant.train.proxy_training import proxy_works
from tests.compute.grid_units import synthetic_data, tiny_config, tiny_works
with tempfile.TemporaryDirectory() as tmp:
    _, series = synthetic_data()
    proxies = proxy_works(tiny_config([1]), [series], [series], Path(tmp) / "proxy")
    works = tiny_works(Path(tmp) / "policy", [1]) + proxies
    done = run_grid(works, lambda u: QuietHooks(), works[0].cfg.train, progress=False)
    pooled = run_grid(tiny_works(Path(tmp) / "pool", [1, 2]), lambda u: QuietHooks(), works[0].cfg.train, 2, False)
assert len(done) == 2 and len(pooled) == 2, (done, pooled)
assert not any(m.split(".")[0] in ("mlflow", "dvc", "optuna", "ray") for m in sys.modules)
print("trained", sorted(u.name for u in done))
"""
)


def test_the_training_path_imports_and_trains_without_mlflow_dvc_optuna_or_ray() -> None:
    done = subprocess.run([sys.executable, "-c", TRAIN_WITHOUT_THEM], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained ['policy/seed_1', 'proxy/seed_1']" in done.stdout
