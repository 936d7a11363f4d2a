"""The grid on a real local Ray runtime (two CPUs): a two-fold walk-forward study on real bars with a unit SIGKILLed
mid-unit gives every unit exactly one outcome, resumes the killed one from its last finished epoch, writes the
checkpoints and ``fold.json`` of a one-worker run byte for byte and logs each epoch to MLflow once; a unit that
raises is not retried and the units not yet started never start; a node running other code refuses a unit before
claiming it; each unit trains with its own thread count; a hook stops a unit at its next epoch; CUDA units ask for a
share of a GPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import mlflow
import pytest
import ray
import torch

from diffquant import tracking
from diffquant.compute import ray_engine
from diffquant.compute.grid import run_grid
from diffquant.compute.reporting import GridError
from diffquant.config import TrainConfig
from diffquant.errors import ConfigError
from diffquant.study import fold_models
from diffquant.train import checkpoint
from tests.compute.grid_units import Gated, Recorder, Stopper, Tee, scripted, tiny_works
from tests.compute.test_grid import assert_same_files, study
from tests.study.test_fold_run import tiny

pytestmark = pytest.mark.slow  # a Ray runtime (seconds to start) and real training

ON_RAY = TrainConfig(device="cpu", grid_address="local")


@pytest.fixture(scope="module", autouse=True)
def ray_runtime() -> Any:
    """One local Ray runtime of two CPUs for the module (the grid finds it running and uses it)."""
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_a_study_on_ray_with_a_unit_killed_mid_unit_equals_the_one_worker_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny(**{"train.seeds": [3, 4], "train.epochs": 3})  # 2 folds x (policy, proxy) x 2 seeds, 1 thread each
    study(cfg, tmp_path / "one")
    gate, outcomes = tmp_path / "killed", {}

    def with_a_victim(works: list, hooks_of: Any, train: TrainConfig, *args: Any) -> dict:
        victim = next(i for i, w in enumerate(works) if w.unit.kind == "policy" and w.unit.seed == 4)
        works = [Gated.of(w, gate) if i == victim else w for i, w in enumerate(works)]
        outcomes.update(run_grid(works, hooks_of, train, *args))
        outcomes["victim"] = works[victim].unit
        return outcomes

    monkeypatch.setattr(fold_models, "run_grid", with_a_victim)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # a throwaway MLflow store: <tmp_path>/mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = tracking.StudyRuns(tmp_path, "ray", {}, {}, tmp_path / "run.json")
    log: list[tuple[str, str, Any]] = []
    try:
        study(
            dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, grid_address="local")),
            tmp_path / "ray",
            lambda fold, group, kind: Tee(runs.hooks(fold, group, kind), Recorder(log, f"{fold}/{group}/{kind}")),
        )
        client, parent = runs.parent.client, runs.parent.run_id
        experiment = client.get_run(parent).info.experiment_id
        children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
        steps = {
            r.info.run_name: [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] for r in children
        }
    finally:
        mlflow.set_tracking_uri(None)

    victim = outcomes.pop("victim")
    assert gate.exists()  # the victim's first attempt did kill its own process, after epoch 1
    assert outcomes[victim].result.resumed_from == 1  # its retry resumed from the epoch the hub held
    assert len(outcomes) == 2 * 2 * 2 and all(o.result.resumed_from == 0 for u, o in outcomes.items() if u != victim)
    units = {name for kind, name, _ in log if kind == "started"}
    assert len(units) == 2 * 2 * 2
    for unit in units:  # one outcome each; every epoch once, the killed unit's too
        calls = [(kind, value) for kind, name, value in log if name == unit]
        assert calls == [("started", 0), ("epoch", 1), ("epoch", 2), ("epoch", 3), ("finished", int(unit[-1]))], unit
    assert len(steps) == 2 * 2 * 2 and all(s == [1, 2, 3] for s in steps.values()), steps  # MLflow: each epoch once
    assert assert_same_files(tmp_path / "one", tmp_path / "ray") > 2 * 2 * 2 * 3


def test_a_unit_that_raises_is_not_retried_and_the_units_not_yet_started_never_start(tmp_path: Path) -> None:
    log: list[tuple[str, str, Any]] = []
    # the others run 4 s each, so a grid that went on after the failure would start all of them
    works = scripted([1], ending="raise", trace=str(tmp_path)) + scripted(range(2, 9), seconds=4.0, trace=str(tmp_path))
    with pytest.raises(ValueError, match="policy/seed_1 is broken") as raised:
        run_grid(works, lambda unit: Recorder(log, "g"), ON_RAY)
    assert any(n.startswith("raised while training unit policy/seed_1 on ") for n in raised.value.__notes__)
    assert (tmp_path / "1").read_text().count("\n") == 1  # one attempt: an exception is not retried
    started = {name for kind, name, _ in log if kind == "started"}
    ended = {name for kind, name, _ in log if kind in ("finished", "failed")}
    assert ("failed", "g/1", "ValueError") in log
    # the ones running when the failure was seen finished, and the rest never started: how many were running then
    # depends on the machine's load (one to four were seen on 2 loaded cores), all eight would take 16 s or more
    assert started == ended and "g/1" in started and len(started) < len(works)
    assert len(list(tmp_path.iterdir())) == len(started)


def test_a_node_running_other_code_refuses_the_unit_before_claiming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_engine, "code_hash", lambda: "0" * 16)  # the driver's view; the workers hash their own
    log: list[tuple[str, str, Any]] = []
    with pytest.raises(GridError, match=r"policy/seed_1: .* runs other diffquant code than the driver"):
        run_grid(scripted([1, 2]), lambda unit: Recorder(log, "g"), ON_RAY)
    assert not [entry for entry in log if entry[0] == "started"]  # nothing was claimed


def test_each_unit_trains_with_its_own_thread_count_and_asks_for_that_many_cpus() -> None:
    works = scripted([1, 2], threads=1) + scripted([3], threads=2)
    outcomes = run_grid(works, lambda unit: Recorder([], "g"), ON_RAY)
    assert [outcomes[w.unit].threads for w in works] == [1, 1, 2]
    with pytest.raises(ConfigError, match=r"train\.threads is 3 but the largest node of the Ray cluster has 2 CPUs"):
        run_grid(scripted([4], threads=3), lambda unit: Recorder([], "g"), ON_RAY)


def test_a_hook_stops_a_unit_at_its_next_epoch_without_failing_the_grid(tmp_path: Path) -> None:
    log: list[tuple[str, str, Any]] = []
    works = tiny_works(tmp_path, [1, 2], epochs=4)
    outcomes = run_grid(works, lambda unit: Stopper(log, "g", seed=1, at=1), ON_RAY)
    assert sorted(u.seed for u in outcomes) == [2]
    assert [(kind, value) for kind, name, value in log if name == "g/1"] == [("started", 0), ("epoch", 1)]
    assert checkpoint.load(works[0].folder / "last.pt")["epoch"] == 1  # what came after the request is dropped
    assert not (works[0].folder / "final.pt").exists()


def test_cuda_on_a_cluster_without_a_gpu_is_refused_and_a_gpu_share_is_asked_for_when_there_is_one() -> None:
    cuda = dataclasses.replace(ON_RAY, device="cuda", gpus_per_unit=0.5)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="the Ray cluster has no GPU"):
            run_grid(scripted([1], device="cuda"), lambda unit: Recorder([], "g"), cuda)
        pytest.skip("no CUDA device: the GPU share itself is not exercised")
    outcomes = run_grid(scripted(range(4), seconds=0.5, device="cuda"), lambda unit: Recorder([], "g"), cuda)
    assert all(o.gpu.endswith(":1") for o in outcomes.values())  # each unit sees the one GPU Ray gave it
