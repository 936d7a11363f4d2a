"""The MLflow run wrapper's metric logging, on a throwaway sqlite store: one step, per-epoch curves, many steps."""

from __future__ import annotations

import math

import mlflow
import pytest

from diffquant import tracking


@pytest.fixture(name="run")
def fixture_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # the store: <tmp_path>/mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow sets it; put back after the test
    try:
        yield tracking.start_run(tmp_path, "t", {"role": "test"})
    finally:
        mlflow.set_tracking_uri(None)


def history(run: tracking.Run, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in run.client.get_metric_history(run.run_id, key))


def test_metrics_of_one_step_many_steps_and_epochs_land_and_non_numbers_are_left_out(run) -> None:
    run.log_metrics({"a": 1.5, "b": None, "c": math.nan, "d": True, "e": 2}, step=3, prefix="x_")
    run.log_history([{"epoch": 1, "loss": 0.5, "note": "warm"}, {"epoch": 2, "loss": 0.25}])
    run.log_steps([(step, {"equity": 1.0 + step / 1000}) for step in range(1200)])  # more than one batch
    logged = run.client.get_run(run.run_id).data.metrics
    assert set(logged) == {"x_a", "x_e", "loss", "equity"}
    assert history(run, "x_a") == [(3, 1.5)] and history(run, "x_e") == [(3, 2.0)]
    assert history(run, "loss") == [(1, 0.5), (2, 0.25)]
    equity = history(run, "equity")
    assert len(equity) == 1200 and equity[-1] == (1199, pytest.approx(2.199))


def test_the_statistics_libraries_versions_are_run_tags() -> None:
    """The verdict's numbers depend on arch and statsmodels: their versions go with every run, like torch's."""
    from importlib import metadata

    versions = tracking.library_versions()
    assert versions["version.arch"] == metadata.version("arch")
    assert versions["version.statsmodels"] == metadata.version("statsmodels")


def test_a_study_reopens_its_own_recorded_run_and_another_experiment_opens_a_new_one(tmp_path, monkeypatch) -> None:
    """A killed train stage restarted with the same params continues its parent run; the next experiment in the same
    workspace, whose units come from the model cache (they resume too), must not write into the previous one's."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_file = tmp_path / "outputs" / "mlflow_run.json"

    def parent(params: dict) -> str:
        runs = tracking.StudyRuns(tmp_path, "study", params, {}, run_file)
        runs.resuming = True  # as when a group's seeds resume from last.pt
        runs.child("f/g/policy/seed_1", "f g policy seed 1", {"seed": "1"}, [])
        return runs.parent.run_id

    try:
        first = parent({"model.kind": "single", "train.epochs": 10})
        assert parent({"model.kind": "single", "train.epochs": 10}) == first  # the same study, restarted
        second = parent({"model.kind": "portfolio", "train.epochs": 10})
        assert second != first  # another experiment: its own parent run
        assert tracking.read_run_id(run_file) == second  # evaluate logs into the new one
        assert parent({"model.kind": "single", "train.epochs": 10}) not in (first, second)  # only the last is resumed
    finally:
        mlflow.set_tracking_uri(None)
