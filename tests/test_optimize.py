"""Hyper-parameter search: the objective, the params writer, and worker processes sharing one study.

The scale-out tests run the real command (``python -m stages.optimize``) as separate processes on a tiny synthetic
configuration, against a journal file and against a throwaway PostgreSQL server, with MLflow in a sqlite file, and
check that every trial finished exactly once, numbered without gaps, with one nested MLflow run each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml

from diffquant import search
from diffquant.config import flatten, from_dict, load
from diffquant.data.splits import Samples, Series
from diffquant.errors import ConfigError
from diffquant.io import write_json
from diffquant.study.fold_data import PLAN_JSON
from diffquant.train.policy_training import TrainingData
from tests.postgres import postgres

REPO = Path(__file__).resolve().parents[1]
NAMES = ["open", "high", "low", "close", "volume", "rolling_vol"]
CTX, H, TF_MS = 16, 8, 1_800_000
TRAIN_SAMPLES = 1024
TINY = {
    "seed": 7,
    "window": {"context": CTX, "horizon": H, "stride": H},
    "model": {"itransformer": {"d_model": 8, "n_heads": 2, "n_layers": 1, "d_ff": 16}, "head": {"dense": [8]}},
    "train": {
        "epochs": 2,
        "batch_size": 16,
        "warmup_epochs": 1,
        "val_freq": 1,
        "select_min_rebalances": 1,
        "device": "cpu",
        "threads": 1,  # two commands on one small machine: one thread per trial, as the old worker processes had
    },
    "optimize": {"pruner_warmup_epochs": 0},
    "baselines": {"momentum_lookbacks": [4, 8]},
}


def _walk(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    returns = 0.004 * rng.standard_normal(shape)
    features = rng.standard_normal((*shape, len(NAMES))).astype(np.float32)
    features[..., 3] = 100 * returns
    return 30_000 * np.cumprod(1 + returns, axis=-1), features


def _cut(project: Path) -> Path:
    """The split stage's layout, one fold of one asset: what ``stages.optimize`` finds as the newest cut."""
    return project / "split" / "fold" / from_dict(TINY).data.universe[0]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder: tiny params.yaml and a synthetic split (TRAIN_SAMPLES train samples, a 200-bar val quarter).

    Enough samples that a trial takes about a second: with trials of a tenth of a second, the worker whose imports
    finish first runs the whole study before the other one starts, and the tests of sharing prove nothing.
    """
    root = tmp_path_factory.mktemp("project")
    rng = np.random.default_rng(0)
    close, features = _walk(rng, (TRAIN_SAMPLES, CTX + H))
    cut = _cut(root)
    Samples(features, close, 1e-5 * rng.standard_normal(close.shape), np.arange(TRAIN_SAMPLES), NAMES).save(
        cut / "train.npz"
    )
    n = CTX + 1 + 200
    close, features = _walk(rng, (n,))
    open_time = 1_735_689_600_000 + TF_MS * np.arange(n, dtype=np.int64)
    Series(features, close, np.zeros(n), open_time, CTX + 1, TF_MS, NAMES).save(cut / "val.npz")
    write_json(root / "split" / PLAN_JSON, {"folds": [{"name": "fold", "assets": [cut.name]}]})
    (root / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    return root


def _env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env.update(
        PYTHONPATH=str(REPO),
        MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}",
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    return env


def _optimize(project: Path, *args: str) -> subprocess.Popen:
    """The command as a user runs it, from the project folder (its repo root)."""
    cmd = [sys.executable, "-m", "stages.optimize", "--split", "split", *args]
    return subprocess.Popen(
        cmd, cwd=project, env=_env(project), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-6000:]
    return out


def _check_study(project: Path, storage: str, name: str, n_trials: int, n_processes: int) -> tuple[list, list]:
    """Every trial finished once, numbered 0..n-1, one nested MLflow run each; returns the trials and the (start, end)
    times of their runs (a trial's run starts when its unit starts training)."""
    study = optuna.load_study(study_name=name, storage=search.open_storage(storage, project))
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # none lost, none duplicated
    assert n_trials <= len(trials) < n_trials + n_processes  # racing workers may overshoot by one each
    assert {t.state for t in trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert len({t.user_attrs["seed"] for t in trials}) == len(trials)

    import mlflow  # here, not at the top: only the slow scale-out tests read MLflow (an import of seconds)

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    parent_id = study.user_attrs[search.PARENT_RUN_ATTR]
    exp_id = client.get_run(parent_id).info.experiment_id
    children = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=1000)
    assert sorted(int(r.data.tags["optuna_trial"]) for r in children) == list(range(len(trials)))
    by_number = {int(r.data.tags["optuna_trial"]): r for r in children}
    for t in trials:
        run = by_number[t.number]
        assert run.data.tags["optuna_state"] == t.state.name
        assert float(run.data.params["train.lr"]) == t.params["train.lr"]
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert run.data.metrics["objective_val_sharpe"] == t.value
    summary = json.loads((project / "out" / "summary.json").read_text())
    assert summary["n_trials"] == len(trials)
    assert client.get_run(parent_id).data.metrics["n_trials"] == len(trials)
    return trials, [(r.info.start_time, r.info.end_time) for r in children]


def _assert_reproducible(project: Path, trials: list) -> None:
    """Re-train completed trials here, in this process and in another order: the same value, bit for bit."""
    cfg = load(project / "params.yaml")
    data = TrainingData.load(_cut(project))
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done
    torch.set_flush_denormal(True)  # as run_stage sets it in the workers
    try:
        for t in reversed(done[-3:]):
            seed = search.trial_seed(cfg.seed, t.number)
            assert t.user_attrs["seed"] == seed
            trial_cfg = search.with_params(cfg, {**t.params, "train.threads": t.user_attrs["threads"]})
            assert search.train_trial(trial_cfg, data, seed).value == t.value, t.number
    finally:
        torch.set_flush_denormal(False)  # torch's default


@pytest.mark.slow  # two worker processes of the real command
def test_two_workers_on_a_journal_file(project: Path) -> None:
    t0 = time.perf_counter()
    out = _finish(
        _optimize(
            project,
            "--trials",
            "8",
            "--workers",
            "2",
            "--storage",
            "journal/j.log",
            "--study-name",
            "journal",
            "--out",
            "out",
        )
    )
    seconds = time.perf_counter() - t0
    trials, runs = _check_study(project, "journal/j.log", "journal", 8, 1)
    assert len({t.user_attrs["worker"] for t in trials}) == 1  # one command drove them all
    overlapping = [(a, b) for a in runs for b in runs if a < b and b[0] < a[1]]
    assert overlapping, f"no two trials trained at the same time: {runs}\n{out[-3000:]}"  # the local pool's two
    assert {t.user_attrs["threads"] for t in trials} == {1}
    _assert_reproducible(project, trials)
    print(f"journal: 2 workers x {len(trials)} trials in {seconds:.1f} s")


@pytest.mark.slow  # a PostgreSQL server and three processes of the real command
def test_two_machines_on_postgresql(project: Path) -> None:
    """The multi-machine recipe: create the study once, then two commands (one worker each) at the same time."""
    with postgres() as url:
        common = ["--storage", url, "--study-name", "pg", "--out", "out"]
        _finish(_optimize(project, *common, "--create-only"))
        t0 = time.perf_counter()
        procs = [_optimize(project, *common, "--trials", "6", "--workers", "1") for _ in range(2)]
        for proc in procs:
            _finish(proc)
        seconds = time.perf_counter() - t0
        trials, _ = _check_study(project, url, "pg", 6, 2)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    print(f"postgresql: 2 workers x {len(trials)} trials in {seconds:.1f} s")


@pytest.mark.slow  # trains trials of three epochs, here and on two worker processes
def test_objective_is_the_selected_checkpoint_and_reports_feed_the_pruner_which_stops_the_unit(project: Path) -> None:
    cfg = load(project / "params.yaml")
    data = TrainingData.load(_cut(project))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    assert search.run_search(study, cfg, data, 2, 3, None, "here") == 2
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert sorted(t.intermediate_values) == [1, 2, 3]  # one report per val check
        assert t.intermediate_values[3] == t.value  # the last report is the objective
    for parallel in (1, 2):  # in this process, then the local pool: the pruned unit is stopped, not just ignored
        pruning = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1e9))
        search.run_search(pruning, cfg, data, parallel, 3, None, "here", parallel)
        assert [t.state for t in pruning.trials] == [optuna.trial.TrialState.PRUNED] * parallel
        assert all(list(t.intermediate_values) == [1] for t in pruning.trials)


def test_trial_seed_depends_on_study_seed_and_number_only() -> None:
    assert search.trial_seed(42, 3) == search.trial_seed(42, 3)
    assert len({search.trial_seed(42, n) for n in range(100)} | {search.trial_seed(43, 0)}) == 101


def test_search_space_covers_the_defaults_and_the_key_lambdas() -> None:
    cfg = load(REPO / "params.yaml")
    flat = flatten(cfg.to_dict())
    keys = {d.key for d in search.search_space(cfg)}
    assert {
        "train.lr",
        "train.weight_decay",
        "train.grad_clip",
        "loss.lambda_bias",
        "loss.lambda_flat",
        "model.head.tau_dir",
        "model.head.tau_gate",
    } <= keys
    for d in search.SPACE:
        assert d.low <= flat[d.key] <= d.high, d.key
    sharpe_only = from_dict({"loss": {"type": "sharpe"}})
    assert not any(d.key.startswith("loss.") for d in search.search_space(sharpe_only))


def test_write_params_edits_only_the_searched_lines(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    before = path.read_text().splitlines()
    search.write_params(path, {"train.lr": 1.5e-05, "loss.lambda_flat": 0.75, "model.head.tau_gate": 2.0})
    after = path.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert [b.strip() for _, b in changed] == ["tau_gate: 2.0", "lambda_flat: 0.75", "lr: 1.5e-05"]
    cfg = load(path)
    assert (cfg.train.lr, cfg.loss.lambda_flat, cfg.model.head.tau_gate) == (1.5e-05, 0.75, 2.0)
    assert [a.partition("#")[2] for a in before] == [b.partition("#")[2] for b in after]  # every comment kept
    with pytest.raises(ConfigError, match=r"train\.nope"):
        search.write_params(path, {"train.nope": 1.0})
    assert path.read_text().splitlines() == after


def test_write_params_keeps_a_comment_in_its_column(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("# top\ntrain:\n  lr: 1.0e-3        # step size\n  epochs: 30\nloss:\n  lambda_bias: 0.25  # key\n")
    search.write_params(path, {"train.lr": 0.000123456789, "loss.lambda_bias": 0.0})
    lines = path.read_text().splitlines()
    assert lines == [
        "# top",
        "train:",
        "  lr: 0.000123456789 # step size",
        "  epochs: 30",
        "loss:",
        "  lambda_bias: 0.0   # key",
    ]
    assert yaml.safe_load(path.read_text())["train"]["lr"] == 0.000123456789


def test_a_study_refuses_trials_of_another_setup(project: Path) -> None:
    cfg = load(project / "params.yaml")
    files = [_cut(project) / "train.npz", _cut(project) / "val.npz"]
    study = optuna.create_study(direction="maximize")
    search.check_setup(study, search.setup(cfg, 2, files))
    search.check_setup(
        study, search.setup(search.with_params(cfg, {"train.lr": 5e-4}), 2, files)
    )  # a searched key: same
    with pytest.raises(search.StudyMismatch, match="epochs"):
        search.check_setup(study, search.setup(cfg, 3, files))
    with pytest.raises(search.StudyMismatch, match="params_sha256"):
        search.check_setup(study, search.setup(search.with_params(cfg, {"train.batch_size": 32}), 2, files))
    with pytest.raises(search.StudyMismatch, match="data_sha256"):
        search.check_setup(study, search.setup(cfg, 2, files[:1]))
