"""End to end: ``dvc repro`` of a tiny configuration in a temporary copy of the repository, then what a user does
next: a no-op repro, an ablation with ``dvc exp run -S``, and the MLflow server's REST API.

Slow by design (about a minute and a half): it runs the real chain on the shipped bars.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.repo_copy import REPO, deep_update, env, make_repo, run

pytestmark = pytest.mark.slow

TINY = {
    "split": {"train_start": "2025-01-01"},  # one quarter of training data
    "train": {"epochs": 2, "val_freq": 1, "batch_size": 32, "select_min_rebalances": 1},
    "thresholds": {"trials": 4},
}


def _run(args: list[str], cwd: Path) -> str:
    return run(args, cwd, timeout=900)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC copy of the project's tracked files with tiny params, after one ``dvc repro``."""
    params = deep_update(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    dst = make_repo(tmp_path_factory.mktemp("repo"), params)
    _run([sys.executable, "-m", "dvc", "repro"], dst)
    return dst


def _client(repo: Path):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")


def _runs(repo: Path) -> list:
    client = _client(repo)
    exp = client.get_experiment_by_name("diffquant")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_repro_logs_one_complete_run(repo: Path) -> None:
    (run,) = _runs(repo)
    m, p = run.data.metrics, run.data.params
    for key in (
        "best_val_sharpe",
        "test_sharpe",
        "backtest_sharpe",
        "test_buy_and_hold_sharpe",
        "threshold_enter_long",
        "val_sharpe",
        "train_loss",
    ):
        assert key in m, key
    assert p["loss.lambda_bias"] == "0.25" and p["train.epochs"] == "2"
    assert run.data.tags["git_commit"] != "unknown" and "data_hash" in run.data.tags
    assert [h.step for h in _client(repo).get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    artifacts = {
        a.path
        for d in ("evaluate", "checkpoints", "train", "thresholds", "data")
        for a in _client(repo).list_artifacts(run.info.run_id, d)
    }
    for path in (
        "evaluate/test.png",
        "evaluate/backtest_record.csv",
        "checkpoints/best.pt",
        "train/params.yaml",
        "thresholds/trials.csv",
        "data/quality.json",
    ):
        assert path in artifacts, path
    evaluate = json.loads((repo / "outputs/metrics/evaluate.json").read_text())
    assert set(evaluate) == {"test", "backtest"} and "buy_and_hold" in evaluate["test"]
    assert "| run |" in (repo / "outputs/compare/compare.md").read_text()


def test_second_repro_does_nothing(repo: Path) -> None:
    before = len(_runs(repo))
    out = _run([sys.executable, "-m", "dvc", "repro"], repo)
    assert "Running stage" not in out
    assert len(_runs(repo)) == before


def test_ablation_reruns_only_what_depends_on_the_loss(repo: Path) -> None:
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "after repro"], repo)
    out = _run([sys.executable, "-m", "dvc", "exp", "run", "-S", "loss.lambda_bias=0.3"], repo)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert {"train", "threshold-opt", "evaluate", "compare"} <= ran
    assert not ran & {"download", "aggregate", "features", "split"}
    runs = _runs(repo)
    assert len(runs) == 2
    assert runs[-1].data.params["loss.lambda_bias"] == "0.3"
    assert runs[-1].data.tags.get("dvc_exp_name")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_server_lists_the_run(repo: Path) -> None:
    port = _free_port()
    server_env = env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=repo,
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
                time.sleep(0.5)
        exp = json.load(
            urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=diffquant")
        )
        req = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search",
            method="POST",
            data=json.dumps({"experiment_ids": [exp["experiment"]["experiment_id"]]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        runs = json.load(urllib.request.urlopen(req))["runs"]
        assert runs and all("test_sharpe" in {m["key"] for m in r["data"]["metrics"]} for r in runs)
        run_id = runs[0]["info"]["run_id"]
        listing = json.load(
            urllib.request.urlopen(f"{base}/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=evaluate")
        )
        assert any(f["path"] == "evaluate/test.png" for f in listing["files"])
    finally:
        server.terminate()
        server.wait(timeout=30)
