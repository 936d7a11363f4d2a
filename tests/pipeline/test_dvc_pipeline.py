"""End to end: ``dvc repro`` of a tiny configuration in a temporary copy of the repository (the one-asset study,
``folds.scheme: single``), then what a user does next: a no-op repro, an ablation with ``dvc exp run -S``, a
walk-forward study by ``-S folds.scheme=expanding``, serving, paper trading, and the MLflow server's REST API.

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

import pandas as pd
import pytest
import torch
import yaml

from diffquant.data.contracts import to_ms
from diffquant.evaluate.metric_names import study_metric, verdict_metric
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


def _folds(repo: Path) -> list[str]:
    return [f["name"] for f in json.loads((repo / "data_source/split/plan.json").read_text())["folds"]]


def _fold(repo: Path, name: str) -> dict:
    return json.loads((repo / "outputs/evaluate/folds" / name / "fold.json").read_text())


def _span(repo: Path, name: str) -> list[str]:
    """The replay window of a registered model: the fold's test window."""
    fold = _fold(repo, name)["fold"]
    return ["--start", fold["test_start"], "--end", fold["test_end"]]


def test_repro_logs_a_study_run_with_a_child_per_trained_seed(repo: Path) -> None:
    runs = _runs(repo)
    (parent,) = _role(runs, "study")
    children = _role(runs, "policy_seed")
    assert sorted(c.data.tags["seed"] for c in children) == ["1", "2"]  # the two folds share their models
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    (proxy,) = _role(runs, "proxy")
    assert len([r for r in _role(runs, "proxy_seed") if r.data.tags["mlflow.parentRunId"] == proxy.info.run_id]) == 2

    m, p = parent.data.metrics, parent.data.params
    headline = [
        study_metric(t, "policy", k) for t in ("universe", "BTCUSDT") for k in ("sharpe", "sharpe_ci_low", "dsr")
    ]
    headline += [study_metric(t, "buy_and_hold", "sharpe") for t in ("universe", "BTCUSDT")]
    for key in (*headline, "pbo", verdict_metric("spa_p"), verdict_metric("mde_sharpe")):
        assert key in m, key
    assert p["loss.lambda_bias"] == "0.25" and p["train.epochs"] == "2" and p["train.seeds"] == "[1, 2]"
    assert parent.data.tags["git_commit"] != "unknown" and parent.data.tags["scheme"] == "single"
    assert parent.info.status == "FINISHED"
    assert {"study/report.md", "study/equity.png", "study/folds.csv", "train/history.png", "train/params.yaml"} <= (
        _artifacts(repo, parent.info.run_id, ("study", "train"))
    )
    assert "data/BTCUSDT/quality.json" in _artifacts(repo, parent.info.run_id, ("data/BTCUSDT",))
    for child in children:
        assert [h.step for h in _client(repo).get_metric_history(child.info.run_id, "train_loss")] == [1, 2]

    evaluate = json.loads((repo / "outputs/metrics/evaluate.json").read_text())
    assert {"tracks", "pbo", "verdict", "registry"} <= set(evaluate)
    report = (repo / "outputs/evaluate/report.md").read_text()
    assert "universe book" in report and "PBO" in report and "## Verdict" in report
    compare = (repo / "outputs/compare/compare.md").read_text()
    assert len([line for line in compare.splitlines() if line.startswith("| itransformer_hybrid ")]) == 1


def test_the_single_scheme_is_the_split_quarters_trained_once(repo: Path) -> None:
    """folds.scheme: single: the test and backtest quarters of ``split:`` are two folds with the same train and val,
    so one trained folder serves both and their choices on val are the same; each fold's test is its quarter."""
    params = yaml.safe_load((repo / "params.yaml").read_text())["split"]
    assert _folds(repo) == [params["test_start"], params["backtest_start"]]
    (digest,) = [p.name for p in (repo / "outputs/train/pooled").iterdir()]
    test, backtest = (_fold(repo, name) for name in _folds(repo))
    assert test["models"] == backtest["models"] == {"pooled": f"../../../train/pooled/{digest}"}
    assert test["entries"]["BTCUSDT"]["tuned"] == backtest["entries"]["BTCUSDT"]["tuned"]
    assert backtest["fold"]["test_end"] == params["backtest_end"]


def test_second_repro_does_nothing(repo: Path) -> None:
    before = len(_runs(repo))
    out = _run([sys.executable, "-m", "dvc", "repro"], repo)
    assert "Running stage" not in out
    assert len(_runs(repo)) == before


def _registered(repo: Path) -> str:
    return f"diffquant-{yaml.safe_load((repo / 'params.yaml').read_text())['experiment']}-BTCUSDT"


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


def _bars(repo: Path, rows: int) -> pd.DataFrame:
    """The last ``rows`` bars the aggregate stage wrote, as the model's input (open_time in Unix ms)."""
    bars = pd.read_parquet(repo / "data_source/bars/BTCUSDT/bars.parquet").tail(rows).reset_index(drop=True)
    return bars.assign(open_time=to_ms(bars["open_time"]))


def test_repro_registers_the_newest_folds_policy_with_honest_aliases(repo: Path) -> None:
    """evaluate logs the newest fold's seed ensemble as a model of the study run, registers it as candidate,
    promotes it to champion exactly when the gates it reports pass, and logs the bars it reads by hash."""
    client, name = _client(repo), _registered(repo)
    (parent,) = _role(_runs(repo), "study")
    candidate = client.get_model_version_by_alias(name, "candidate")
    assert candidate.run_id == parent.info.run_id
    registry = json.loads((repo / "outputs/metrics/evaluate.json").read_text())["registry"]
    assert registry["fold"] == _folds(repo)[-1] and list(registry["policies"]) == ["BTCUSDT"]
    verdict = registry["policies"]["BTCUSDT"]
    assert [g["key"] for g in verdict["gates"]] == ["psr", "dsr", "beats_buy_and_hold"]
    assert verdict["champion"] == all(g["passed"] for g in verdict["gates"])
    if verdict["champion"]:
        assert client.get_model_version_by_alias(name, "champion").version == candidate.version
    else:
        with pytest.raises(Exception, match="champion"):
            client.get_model_version_by_alias(name, "champion")
    assert {k: v for k, v in candidate.tags.items() if k.startswith("gate.")} == {
        f"gate.{g['key']}": "passed" if g["passed"] else "failed" for g in verdict["gates"]
    }
    assert "## Registry" in (repo / "outputs/evaluate/report.md").read_text()
    experiment = client.get_experiment_by_name("diffquant")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    inputs = {d.dataset.name: d for d in client.get_run(parent.info.run_id).inputs.dataset_inputs}
    assert inputs["BTCUSDT_bars"].dataset.digest == sha256(repo / "data_source/bars/BTCUSDT/bars.parquet")[:32]


def test_the_newest_fold_paper_traded_books_what_it_booked(repo: Path) -> None:
    """The documented proofs: the fold itself, and the registered candidate (raw bars in), replayed bar by bar
    through the paper trader over the fold's test window, book what the evaluate stage booked."""
    fold = f"outputs/evaluate/folds/{_folds(repo)[-1]}"
    check = ["--symbol", "BTCUSDT", "--check", fold]
    out = _run([*PAPER, "--model", fold, *check, "--no-mlflow", "--ledger", "outputs/paper/fold.db"], repo)
    assert f"ledger equals {fold} within 1e-06" in out, out[-3000:]
    registered = ["--model", f"models:/{_registered(repo)}@candidate", *_span(repo, _folds(repo)[-1])]
    out = _run([*PAPER, *registered, *check, *PROOF], repo)
    assert f"ledger equals {fold} within 1e-06" in out, out[-3000:]
    (paper,) = _role(_runs(repo), "paper")
    assert paper.info.status == "FINISHED"
    assert _client(repo).get_metric_history(paper.info.run_id, "paper_equity")


def test_served_model_answers_a_post_of_bars(repo: Path) -> None:
    """``mlflow models serve`` of the registered alias answers raw bars with the loaded model's positions."""
    uri = f"models:/{_registered(repo)}@candidate"
    model = _model(repo, uri)
    bundle = model.unwrap_python_model().bundle
    bars = _bars(repo, bundle.min_bars + 5)
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


def test_ablation_reruns_only_what_depends_on_the_loss(repo: Path) -> None:
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "after repro"], repo)
    out = _run([sys.executable, "-m", "dvc", "exp", "run", "-S", "loss.lambda_bias=0.3"], repo)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert {"train", "threshold-opt", "evaluate", "compare"} <= ran
    assert not ran & {"download", "aggregate", "features", "split", "train-proxy"}  # the proxy has no loss
    parents = _role(_runs(repo), "study")
    assert len(parents) == 2
    assert parents[-1].data.params["loss.lambda_bias"] == "0.3"
    assert parents[-1].data.tags.get("dvc_exp_name")


MLFLOW_SERVE = [str(Path(sys.executable).parent / "mlflow"), "models", "serve"]
PAPER = [sys.executable, "-m", "stages.paper"]
PROOF = ["--ledger", "outputs/paper/proof.db"]


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
        parents = [r for r in runs if {"key": "role", "value": "study"} in r["data"].get("tags", [])]
        headline = study_metric("universe", "policy", "sharpe")
        assert parents and all(headline in {m["key"] for m in r["data"]["metrics"]} for r in parents)
        run_id = parents[0]["info"]["run_id"]
        listing = json.load(urllib.request.urlopen(f"{base}/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=study"))
        assert any(f["path"] == "study/equity.png" for f in listing["files"])
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_study_is_a_dvc_exp_run_and_appending_a_fold_trains_only_that_fold(repo: Path) -> None:
    """``dvc exp run -S folds.scheme=expanding ...`` runs the same chain over walk-forward folds and records the
    experiment; extending ``folds.last_test_end`` trains only the new fold's models (the first fold's checkpoints
    untouched) and the newest fold is what gets registered and paper-traded."""
    study = ["-S", "folds.scheme=expanding", "-S", "folds.train_start='2025-01-01'", "-S", "folds.val_months=1"]
    study += ["-S", "folds.test_months=1", "-S", "folds.first_test='2025-03-01'"]
    _run([sys.executable, "-m", "dvc", "exp", "run", *study, "-S", "folds.last_test_end='2025-04-01'"], repo)
    assert _folds(repo) == ["2025-03-01"]
    (first,) = [
        p
        for p in (repo / "outputs/train/pooled").iterdir()
        if (p / "seed_1" / "best.pt").is_file() and _fold(repo, "2025-03-01")["models"]["pooled"].endswith(p.name)
    ]
    best = (first / "seed_1" / "best.pt").stat().st_mtime_ns, (first / "seed_1" / "best.pt").read_bytes()

    out = _run([sys.executable, "-m", "dvc", "exp", "run", *study, "-S", "folds.last_test_end='2025-05-01'"], repo)
    assert _folds(repo) == ["2025-03-01", "2025-04-01"]
    assert "2025-04-01/pooled/policy/seed_1" in out  # the new fold's group trained ...
    assert f"resuming from {first / 'seed_1' / 'last.pt'} after epoch 2" in out  # ... the first fold's was done
    assert ((first / "seed_1" / "best.pt").stat().st_mtime_ns, (first / "seed_1" / "best.pt").read_bytes()) == best
    shown = json.loads(_run([sys.executable, "-m", "dvc", "exp", "show", "--json"], repo))
    assert '"last_test_end": "2025-05-01"' in json.dumps(shown)  # the experiments are recorded, with their params

    registry = json.loads((repo / "outputs/metrics/evaluate.json").read_text())["registry"]
    assert registry["fold"] == "2025-04-01"
    fold = "outputs/evaluate/folds/2025-04-01"
    check = ["--symbol", "BTCUSDT", "--check", fold, "--no-mlflow"]
    registered = ["--model", f"models:/{_registered(repo)}@candidate", *_span(repo, "2025-04-01")]
    out = _run([*PAPER, *registered, *check, "--ledger", "outputs/paper/wf.db"], repo)
    assert f"ledger equals {fold} within 1e-06" in out, out[-3000:]
