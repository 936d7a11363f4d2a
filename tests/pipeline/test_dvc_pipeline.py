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

from diffquant.evaluate.metric_names import metric_name
from tests.repo_copy import REPO, deep_update, env, make_repo, run

pytestmark = pytest.mark.slow

TINY = {
    "split": {"train_start": "2025-01-01"},  # one quarter of training data
    "train": {"epochs": 2, "val_freq": 1, "batch_size": 32, "select_min_rebalances": 1, "seeds": [1, 2]},
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


def _role(runs: list, role: str) -> list:
    return [r for r in runs if r.data.tags.get("role") == role]


def _artifacts(repo: Path, run_id: str, folders: tuple[str, ...]) -> set[str]:
    return {a.path for d in folders for a in _client(repo).list_artifacts(run_id, d)}


def test_repro_logs_a_parent_run_with_one_child_per_seed(repo: Path) -> None:
    runs = _runs(repo)
    (parent,) = _role(runs, "policy")
    children = _role(runs, "policy_seed")
    assert sorted(c.data.tags["seed"] for c in children) == ["1", "2"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    (proxy,) = _role(runs, "proxy")
    assert len([r for r in _role(runs, "proxy_seed") if r.data.tags["mlflow.parentRunId"] == proxy.info.run_id]) == 2

    m, p = parent.data.metrics, parent.data.params
    evaluated = [
        metric_name("test", k)
        for k in (
            "sharpe",
            "sharpe_seed_median",
            "sharpe_seed_min",
            "psr",
            "dsr",
            "sharpe_ci_low",
            "break_even_bps",
            "sharpe_at_0x_cost",
            "sharpe_at_3x_cost",
        )
    ]
    evaluated += [metric_name("test", "sharpe", book) for book in ("proxy", "momentum", "buy_and_hold")]
    evaluated += [metric_name(split, k) for split, k in (("backtest", "sharpe"), ("val", "sharpe"), ("val", "dsr"))]
    for key in ("best_val_sharpe_median", *evaluated):
        assert key in m, key
    assert p["loss.lambda_bias"] == "0.25" and p["train.epochs"] == "2" and p["train.seeds"] == "[1, 2]"
    assert parent.data.tags["git_commit"] != "unknown" and "data_hash" in parent.data.tags
    assert parent.info.status == "FINISHED"
    assert {
        "evaluate/report.md",
        "evaluate/test.png",
        "evaluate/books.csv",
        "train/history.png",
        "train/params.yaml",
        "data/quality.json",
    } <= _artifacts(repo, parent.info.run_id, ("evaluate", "train", "data"))
    for child in children:
        assert [h.step for h in _client(repo).get_metric_history(child.info.run_id, "train_loss")] == [1, 2]
        seed_keys = [
            metric_name(split, k)
            for split, k in (("val", "sharpe"), ("test", "sharpe"), ("test", "dsr"), ("backtest", "sharpe"))
        ]
        for key in ("threshold_enter_long", *seed_keys):
            assert key in child.data.metrics, key
        seed = child.data.tags["seed"]
        assert {"checkpoints/best.pt", "train/history.json", f"thresholds/policy_seed_{seed}.csv"} <= _artifacts(
            repo, child.info.run_id, ("checkpoints", "train", "thresholds")
        )

    evaluate = json.loads((repo / "outputs/metrics/evaluate.json").read_text())
    assert {"val", "test", "backtest", "trials", "momentum_lookback"} <= set(evaluate)
    test = evaluate["test"]
    assert {"policy", "proxy", "momentum", "buy_and_hold", "flat"} == set(test)
    assert set(test["policy"]["seeds"]) == {"1", "2"} and test["policy"]["distribution"]["sharpe"]["n"] == 2
    assert set(test["policy"]["ensemble"]["costs"]["levels"]) == {"0x", "1x", "2x", "3x"}
    assert evaluate["trials"]["policy_n"] == 2 * (4 + 1)
    report = (repo / "outputs/evaluate/report.md").read_text()
    assert "MSE proxy ensemble" in report and "momentum" in report and "Cost sweep" in report
    assert len((repo / "outputs/compare/compare.md").read_text().splitlines()) == 3  # header, rule, one run


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
    assert not ran & {"download", "aggregate", "features", "split", "train-proxy"}  # the proxy has no loss
    parents = _role(_runs(repo), "policy")
    assert len(parents) == 2
    assert parents[-1].data.params["loss.lambda_bias"] == "0.3"
    assert parents[-1].data.tags.get("dvc_exp_name")


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
        parents = [r for r in runs if {"key": "role", "value": "policy"} in r["data"].get("tags", [])]
        assert parents and all("test_sharpe" in {m["key"] for m in r["data"]["metrics"]} for r in parents)
        run_id = parents[0]["info"]["run_id"]
        listing = json.load(
            urllib.request.urlopen(f"{base}/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=evaluate")
        )
        assert any(f["path"] == "evaluate/test.png" for f in listing["files"])
    finally:
        server.terminate()
        server.wait(timeout=30)


WALK_FORWARD = "walkforward/dvc.yaml"


def _fold(repo: Path, name: str) -> dict:
    return json.loads((repo / "outputs/folds" / name / "fold.json").read_text())


def test_single_scheme_walk_forward_reproduces_the_evaluate_stage_exactly(repo: Path) -> None:
    """folds.scheme: single = the split protocol: its two folds (test, backtest) are the evaluate stage's quarters,
    number for number (same data path, models, thresholds and judge)."""
    _run([sys.executable, "-m", "dvc", "repro", WALK_FORWARD], repo)
    evaluated = json.loads((repo / "outputs/metrics/evaluate.json").read_text())
    params = yaml.safe_load((repo / "params.yaml").read_text())["split"]
    for split, start in (("test", params["test_start"]), ("backtest", params["backtest_start"])):
        entry = _fold(repo, start)["entries"]["BTCUSDT"]
        assert {k: v for k, v in entry.items() if k not in ("tuned", "trials")} == evaluated[split]
    report = (repo / "outputs/study/report.md").read_text()
    assert report.startswith("# ") and "universe book" in report and "PBO" in report


def test_appending_a_fold_runs_only_that_fold(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["folds"].update(
        scheme="expanding",
        train_start="2025-01-01",
        val_months=1,
        test_months=1,
        first_test="2025-03-01",
        last_test_end="2025-04-01",
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run([sys.executable, "-m", "dvc", "repro", WALK_FORWARD], repo)
    first = (repo / "outputs/folds/2025-03-01/fold.json").read_bytes()

    params["folds"]["last_test_end"] = "2025-05-01"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(_run([sys.executable, "-m", "dvc", "status", "--json", WALK_FORWARD], repo))
    # the data stage is up to date; only the folds stage's params changed (the study follows the folds' output)
    assert status == {f"{WALK_FORWARD}:folds": [{"changed deps": {"params.yaml": {"folds": "modified"}}}]}
    out = _run([sys.executable, "-m", "dvc", "repro", WALK_FORWARD], repo)
    assert "fold 2025-03-01: up to date" in out
    assert (repo / "outputs/folds/2025-03-01/fold.json").read_bytes() == first
    assert "sharpe" in _fold(repo, "2025-04-01")["entries"]["BTCUSDT"]["policy"]["ensemble"]["metrics"]
