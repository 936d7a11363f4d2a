"""End to end: ``dvc repro`` of a tiny configuration in a temporary copy of the repository, then what a user does
next: a no-op repro, an ablation with ``dvc exp run -S``, and the MLflow server's REST API.

Slow by design (about a minute and a half): it runs the real chain on the shipped bars.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from diffquant.data.contracts import to_ms
from diffquant.data.splits import Series
from diffquant.evaluate.metric_names import metric_name, study_metric
from diffquant.io import sha256
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


def _registered(repo: Path) -> str:
    return f"diffquant-{yaml.safe_load((repo / 'params.yaml').read_text())['experiment']}"


def _model(repo: Path, uri: str):
    """Load a model from the repo's store; MLflow's global URI (and the env variable it sets) is put back after, or
    later tests in this process would read another store."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    try:
        return mlflow.pyfunc.load_model(uri)
    finally:
        mlflow.set_tracking_uri(before)


def _quarter_bars(repo: Path, split: str, warmup: int) -> tuple[pd.DataFrame, Series]:
    """The raw bars of a split's series (warm-up and quarter), preceded by the features' own warm-up."""
    series = Series.load(repo / "data_source" / "split" / f"{split}.npz")
    bars = pd.read_parquet(repo / "data_source" / "bars" / "BTCUSDT" / "bars.parquet")
    first = int(np.searchsorted(to_ms(bars["open_time"]), series.open_time[0]))
    window = bars.iloc[first - warmup : first + len(series.close)].reset_index(drop=True)
    return window.assign(open_time=to_ms(window["open_time"])), series  # the model's input: open_time in Unix ms


def test_repro_registers_the_ensemble_with_honest_aliases(repo: Path) -> None:
    """evaluate logs every seed and the ensemble as models, registers the ensemble as candidate, promotes it to
    champion exactly when the gates it reports pass, and logs the data it was judged on by hash."""
    client, name = _client(repo), _registered(repo)
    (parent,) = _role(_runs(repo), "policy")
    candidate = client.get_model_version_by_alias(name, "candidate")
    assert candidate.run_id == parent.info.run_id
    registry = json.loads((repo / "outputs/metrics/evaluate.json").read_text())["registry"]
    assert registry["split"] == "test" and [g["key"] for g in registry["gates"]] == ["psr", "dsr", "beats_buy_and_hold"]
    assert registry["champion"] == all(g["passed"] for g in registry["gates"])
    if registry["champion"]:
        assert client.get_model_version_by_alias(name, "champion").version == candidate.version
    else:
        with pytest.raises(Exception, match="champion"):
            client.get_model_version_by_alias(name, "champion")
    assert {k: v for k, v in candidate.tags.items() if k.startswith("gate.")} == {
        f"gate.{g['key']}": "passed" if g["passed"] else "failed" for g in registry["gates"]
    }
    report = (repo / "outputs/evaluate/report.md").read_text()
    assert "## Registry" in report
    for gate in registry["gates"]:
        assert f"{'passed' if gate['passed'] else 'FAILED'}: {gate['label']}" in report
    experiment = client.get_experiment_by_name("diffquant")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    inputs = {d.dataset.name: d for d in client.get_run(parent.info.run_id).inputs.dataset_inputs}
    assert set(inputs) == {"val", "test", "backtest"}
    assert inputs["test"].dataset.digest == sha256(repo / "data_source/split/test.npz")[:32]
    models = client.search_logged_models([experiment.experiment_id])
    by_run = {(m.source_run_id, m.name) for m in models}
    assert (parent.info.run_id, "policy_ensemble") in by_run
    for child in _role(_runs(repo), "policy_seed"):
        assert (child.info.run_id, "policy") in by_run
        assert {d.dataset.name for d in child.inputs.dataset_inputs} == {"train", "val"}


def test_registered_model_gives_the_engines_positions(repo: Path) -> None:
    """Raw bars of the test quarter into the registered ensemble = the evaluate stage's record, bit for bit."""
    model = _model(repo, f"models:/{_registered(repo)}@candidate")
    bundle = model.unwrap_python_model().bundle
    bars, series = _quarter_bars(repo, "test", bundle.warmup)
    out = model.predict(bars)
    record = pd.read_csv(repo / "outputs/evaluate/test_record.csv")
    # the model's first decision is the series' first (bar ctx - 1), which the quarter's first bar holds
    np.testing.assert_array_equal(out["position"].to_numpy()[: len(record)], record["position"].to_numpy())
    assert out["open_time"].iloc[0] == series.open_time[bundle.context - 1]
    for child in _role(_runs(repo), "policy_seed"):  # each seed's own model: its raw decisions, as its record has them
        seed = child.data.tags["seed"]
        raw = _model(repo, f"runs:/{child.info.run_id}/policy").predict(bars)["raw_position"].to_numpy()
        seed_record = pd.read_csv(repo / f"outputs/evaluate/records/test_policy_{seed}.csv")
        np.testing.assert_array_equal(raw[: len(seed_record)], seed_record["raw_position"].to_numpy())


def test_served_model_answers_a_post_of_bars(repo: Path) -> None:
    """``mlflow models serve`` of the registered alias answers raw bars with the loaded model's positions."""
    uri = f"models:/{_registered(repo)}@candidate"
    model = _model(repo, uri)
    bundle = model.unwrap_python_model().bundle
    bars = _quarter_bars(repo, "backtest", bundle.warmup)[0].iloc[: bundle.min_bars + 5]
    positions = [0.5] * len(bundle.members)
    expected = model.predict(bars, params={"positions": positions})
    threads = torch.get_num_threads()
    port = _free_port()
    server = subprocess.Popen(
        [*MLFLOW_SERVE, "-m", uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=repo,
        # torch's thread count is part of a float result: the server computes with as many as this process
        env=env(MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}", OMP_NUM_THREADS=str(threads)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        body = json.dumps({"dataframe_split": bars.to_dict(orient="split"), "params": {"positions": positions}})
        deadline = time.time() + 120
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations", body.encode(), {"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=30) as resp:
                    answer = pd.DataFrame(json.loads(resp.read())["predictions"])
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "mlflow models serve did not answer"
                time.sleep(1)
    finally:
        server.terminate()
        server.wait(timeout=30)
    pd.testing.assert_frame_equal(answer[expected.columns], expected, check_dtype=False, check_exact=True)


def test_paper_trader_replays_the_backtest_quarter_as_evaluate_booked_it(repo: Path) -> None:
    """The documented proof: the registered candidate, replayed bar by bar through the paper trader over the
    backtest quarter, books what the evaluate stage's record says (the network's float32 products aside)."""
    out = _run(
        [*PAPER, "--model", f"models:/{_registered(repo)}@candidate", "--split", "backtest", *PROOF],
        repo,
    )
    assert "ledger equals outputs/evaluate/backtest_record.csv within 1e-06" in out
    (paper,) = _role(_runs(repo), "paper")
    assert paper.info.status == "FINISHED"
    record = pd.read_csv(repo / "outputs/evaluate/backtest_record.csv")
    equity = _client(repo).get_metric_history(paper.info.run_id, "paper_equity")
    assert len(equity) >= len(record)
    assert equity[-1].value == pytest.approx(record["equity"].iloc[-1], abs=1e-6)


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


MLFLOW_SERVE = [str(Path(sys.executable).parent / "mlflow"), "models", "serve"]
PAPER = [sys.executable, "-m", "stages.paper"]
PROOF = ["--check", "outputs/evaluate/backtest_record.csv", "--ledger", "outputs/paper/proof.db"]


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
    study = _role(_runs(repo), "study")[-1]  # what compare's studies table reads, under its names
    for metric in ("sharpe", "sharpe_ci_low", "sharpe_ci_high", "dsr"):
        assert study_metric("universe", "policy", metric) in study.data.metrics, metric


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

    # the study registers the newest fold's policy, gated on the asset's stitched track
    client, name = _client(repo), f"{_registered(repo)}-walkforward-BTCUSDT"
    candidate = client.get_model_version_by_alias(name, "candidate")
    assert candidate.run_id == _role(_runs(repo), "study")[-1].info.run_id
    registry = json.loads((repo / "outputs/metrics/study.json").read_text())["registry"]
    assert registry["fold"] == "2025-04-01" and list(registry["policies"]) == ["BTCUSDT"]
    verdict = registry["policies"]["BTCUSDT"]
    assert [g["key"] for g in verdict["gates"]] == ["psr", "dsr", "beats_buy_and_hold"]
    assert verdict["champion"] == all(g["passed"] for g in verdict["gates"])
    if not verdict["champion"]:
        with pytest.raises(Exception, match="champion"):
            client.get_model_version_by_alias(name, "champion")
    assert "## Registry" in (repo / "outputs/study/report.md").read_text()

    # that model, and the fold itself, paper-traded over the fold's test window book what the fold booked
    fold = "outputs/folds/2025-04-01"
    check = ["--symbol", "BTCUSDT", "--check", fold, "--no-mlflow"]
    out = _run([*PAPER, "--model", fold, *check, "--ledger", "outputs/paper/fold.db"], repo)
    assert f"ledger equals {fold} within 1e-06" in out, out[-3000:]
    replay = ["--bars", "data_source/bars/BTCUSDT/bars.parquet", "--funding", "data_source/raw/BTCUSDT/funding.parquet"]
    span = ["--start", "2025-04-01", "--end", "2025-05-01", "--ledger", "outputs/paper/registered.db"]
    out = _run([*PAPER, "--model", f"models:/{name}@candidate", *replay, *span, *check], repo)
    assert f"ledger equals {fold} within 1e-06" in out, out[-3000:]
