"""The grid runner: two worker processes train exactly the one-worker models (a walk-forward study on real bars),
every unit reports started -> its epochs -> finished to its own hooks, a failing unit raises its own error after the
running units finish, a dead worker is named, CUDA workers see one GPU each, and the training path imports and runs
without mlflow, dvc or optuna."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from diffquant.compute.grid import GridError, run_grid
from diffquant.compute.units import Unit
from diffquant.config import Config, TrainConfig
from diffquant.folds import plan_folds
from diffquant.study.fold_data import fold_data
from diffquant.study.fold_run import FOLD_JSON, run_folds
from tests.repo_copy import REPO
from tests.study.test_fold_run import assert_same_weights, raw_until, tables, tiny

TWO = TrainConfig(workers=2, device="cpu", threads=2)


class Recorder:
    """SeedHooks of one group that keep every call, in order."""

    def __init__(self, log: list[tuple[str, str, Any]], group: str) -> None:
        self.log, self.group = log, group

    def begin(self, resuming: bool) -> None:
        self.log.append(("begin", self.group, resuming))

    def started(self, seed: int, finished: list) -> None:
        self.log.append(("started", f"{self.group}/{seed}", len(finished)))

    def epoch(self, seed: int, record: dict) -> None:
        self.log.append(("epoch", f"{self.group}/{seed}", record["epoch"]))

    def finished(self, seed: int, outcome: Any) -> None:
        self.log.append(("finished", f"{self.group}/{seed}", outcome.seed))

    def failed(self, seed: int, exc: BaseException) -> None:
        self.log.append(("failed", f"{self.group}/{seed}", type(exc).__name__))


def _study(cfg: Config, out: Path) -> list[tuple[str, str, Any]]:
    raws = {s: raw_until(s, "2024-06-02") for s in cfg.data.universe}
    t = tables(cfg, raws)
    log: list[tuple[str, str, Any]] = []
    folds = [(fold_data(f, t, cfg), out / f.name) for f in plan_folds(cfg.folds, cfg.split)]
    run_folds(cfg, folds, lambda fold, group, kind: Recorder(log, f"{fold}/{group}/{kind}"))
    return log


@pytest.mark.slow  # two small studies, one of them on two spawned workers
def test_two_workers_train_the_one_worker_models_and_report_each_unit_in_order(tmp_path: Path) -> None:
    cfg = tiny(**{"train.seeds": [3, 4], "train.epochs": 2})  # train.threads: 1 per unit, in both runs
    one = _study(cfg, tmp_path / "one")
    two = _study(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, workers=2)), tmp_path / "two")

    folds = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(folds) == 2
    for fold in folds:
        assert (tmp_path / "one" / fold / FOLD_JSON).read_text() == (tmp_path / "two" / fold / FOLD_JSON).read_text()
        checkpoints = sorted((tmp_path / "one" / fold).glob("models/*/*/seed_*/*.pt"))
        assert len(checkpoints) == 2 * 2 * 3  # policy and proxy x two seeds x last, best, final
        for path in checkpoints:
            assert_same_weights(path, tmp_path / "two" / path.relative_to(tmp_path / "one"))

    units = {name for kind, name, _ in one if kind == "started"}
    assert len(units) == 2 * 2 * 2  # folds x kinds x seeds
    for log in (one, two):
        for unit in units:
            calls = [(kind, value) for kind, name, value in log if name == unit]
            assert calls == [("started", 0), ("epoch", 1), ("epoch", 2), ("finished", int(unit[-1]))], unit


@dataclasses.dataclass(frozen=True)
class Done:
    seed: int
    seconds: float = 0.0
    result: Any = None
    pid: int = 0
    gpu: str = ""

    def summary(self) -> dict[str, Any]:
        return {}

    def run_metrics(self) -> dict[str, Any]:
        return {}


@dataclasses.dataclass(frozen=True)
class Scripted:
    """A unit that sleeps, then finishes, raises or kills its process, as told."""

    unit: Unit
    seconds: float = 0.0
    ending: str = "finish"  # finish | raise | die
    meet: str = ""  # a folder: wait there until two processes have arrived (proves they run side by side)

    def finished_epochs(self) -> list[dict[str, Any]]:
        return []

    def run(self, on_epoch: Any, progress: bool) -> Done:
        if self.meet:
            (Path(self.meet) / str(os.getpid())).touch()
            deadline = time.monotonic() + 120
            while len(list(Path(self.meet).iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep(self.seconds)
        if self.ending == "raise":
            raise ValueError(f"{self.unit.name} is broken")
        if self.ending == "die":
            os._exit(9)
        on_epoch({"epoch": 1})
        gpu = (
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')}:{torch.cuda.device_count()}" if torch.cuda.is_available() else ""
        )
        return Done(self.unit.seed, pid=os.getpid(), gpu=gpu)


def test_a_failing_unit_raises_its_own_error_after_the_running_units_finish() -> None:
    log: list[tuple[str, str, Any]] = []
    works = [Scripted(Unit("policy", 1), 0.0, "raise"), Scripted(Unit("policy", 2), 1.0)]
    works += [Scripted(Unit("policy", s), 0.0) for s in range(3, 9)]
    with pytest.raises(ValueError, match="policy/seed_1 is broken"):
        run_grid(works, lambda unit: Recorder(log, "g"), TWO)
    assert ("failed", "g/1", "ValueError") in log
    assert ("finished", "g/2", 2) in log  # it was running: it finished and was reported
    started = {name for kind, name, _ in log if kind == "started"}
    ended = {name for kind, name, _ in log if kind in ("finished", "failed")}
    assert started == ended and len(started) < len(works)  # nothing left hanging; units not yet started never were


def test_a_worker_that_dies_is_reported_with_the_unit_it_was_training() -> None:
    log: list[tuple[str, str, Any]] = []
    works = [Scripted(Unit("proxy", 1, "q1/pooled"), 0.2, "die"), Scripted(Unit("proxy", 2, "q1/pooled"), 0.0)]
    with pytest.raises(GridError, match="q1/pooled/proxy/seed_1"):
        run_grid(works, lambda unit: Recorder(log, "g"), TWO)


def test_units_run_side_by_side_in_separate_processes_and_come_back_by_unit(tmp_path: Path) -> None:
    works = [Scripted(Unit("policy", s), 0.0, meet=str(tmp_path)) for s in range(4)]
    outcomes = run_grid(works, lambda unit: Recorder([], "g"), TWO)
    assert sorted(outcomes) == [w.unit for w in works]
    assert all(outcomes[w.unit].seed == w.unit.seed for w in works)
    assert len({o.pid for o in outcomes.values()}) == 2 and os.getpid() not in {o.pid for o in outcomes.values()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_each_cuda_worker_sees_one_gpu() -> None:
    n = torch.cuda.device_count()
    cfg = TrainConfig(workers=max(2, n), device="cuda")
    outcomes = run_grid(
        [Scripted(Unit("policy", s), 0.5) for s in range(2 * cfg.workers)], lambda u: Recorder([], "g"), cfg
    )
    seen = {o.gpu for o in outcomes.values()}
    assert all(g.endswith(":1") for g in seen)  # one visible device per worker
    assert {g.split(":")[0] for g in seen} == {str(i) for i in range(min(n, cfg.workers))}


BLOCKED = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("mlflow", "dvc", "optuna"):
            raise ImportError(f"{name} is blocked: the training path must not need it")
sys.meta_path.insert(0, Block())
"""

TRAIN_WITHOUT_THEM = (
    BLOCKED
    + """
import tempfile
from pathlib import Path
from diffquant.compute.grid import run_grid
from diffquant.train.proxy_training import proxy_works
from diffquant.compute.units import QuietHooks
from tests.train.grid_units import synthetic_data, tiny_config, tiny_works
with tempfile.TemporaryDirectory() as tmp:
    _, series = synthetic_data()
    proxies = proxy_works(tiny_config([1]), [series], [series], Path(tmp) / "proxy")
    works = tiny_works(Path(tmp) / "policy", [1]) + proxies
    done = run_grid(works, lambda u: QuietHooks(), works[0].cfg.train, progress=False)
assert len(done) == 2, done
assert not any(m.split(".")[0] in ("mlflow", "dvc", "optuna") for m in sys.modules)
print("trained", sorted(u.name for u in done))
"""
)


def test_the_training_path_imports_and_trains_without_mlflow_dvc_or_optuna() -> None:
    done = subprocess.run([sys.executable, "-c", TRAIN_WITHOUT_THEM], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained ['policy/seed_1', 'proxy/seed_1']" in done.stdout
