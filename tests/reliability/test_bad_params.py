"""Bad params, CLI arguments and checkpoints reaching the stages.

The contract of a refusal: exit code 2, exactly one ERROR line naming the key or file at fault, no traceback, and no
output written or changed (the stage's previous valid outputs stay byte for byte). ``stages._cli.run_stage`` turns
a :class:`DiffQuantError` into that one line and exit 2, so most cases are checked in this process: the loader
(:func:`diffquant.config.load`) refuses the params, or the stage's ``main`` raises a ``DiffQuantError`` whose first
line names the key, and the workspace is unchanged. A few cases, one per kind of refusal (the loader, a data stage,
the train stage, a checkpoint reaching evaluate, whose MLflow run must stay empty), run as real processes
(``python -m stages.<stage>``) and check the whole contract; they are marked ``slow``.

Data-file cases are covered through the download stage in tests/data/test_sources.py and checkpoint damage at
library level in tests/train/test_checkpoint.py; this file covers what enters through params.yaml, the command line
and the files one stage hands the next.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from diffquant import tracking
from diffquant.config import Hysteresis, ModelConfig, from_dict, load
from diffquant.errors import ConfigError, DiffQuantError
from diffquant.evaluate.tuned import MomentumChoice, TunedModel, TunedThresholds
from diffquant.model.policy import PolicyNetwork
from diffquant.study.fold_data import read_folds
from diffquant.study.fold_models import fold_groups, keyed_folders
from diffquant.study.fold_run import write_choices
from diffquant.train import checkpoint
from tests.repo_copy import REPO, TINY, deep_update, stage, tiny_params

DATA_STAGES = ("download", "aggregate", "features", "split")


def use_root(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Point the stages at ``root`` as :func:`tests.repo_copy.stage` does for a process: ``DVC_ROOT``, no DVC stage
    workspace, the local MLflow store."""
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.delenv("DVC_STAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def run_main(name: str, *args: str) -> None:
    """``stages.<name>.main(args)`` in this process (``DVC_ROOT`` set by :func:`use_root`)."""
    importlib.import_module(f"stages.{name}").main(list(args))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A workspace holding the data stages' valid outputs for the tiny params (no git, no DVC), made by running the
    data stages in this process on the bundled data; the refused stages run against it."""
    dst = tmp_path_factory.mktemp("bad_params")
    shutil.copytree(REPO / "data_source" / "bundled", dst / "data_source" / "bundled")
    (dst / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        use_root(mp, dst)
        for name in DATA_STAGES:
            run_main(name)
    return dst


@pytest.fixture
def in_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """:func:`root`, with the stages of this process pointed at it."""
    use_root(monkeypatch, root)
    return root


def snapshot(root: Path, skip: str | None = None) -> dict[str, tuple[int, int, int]]:
    """Every file under ``root`` (but the folder ``skip``) with its inode, size and modification time: a failed stage
    must leave this unchanged. Writing a file, even with the same bytes, or replacing it changes these."""
    files = [p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != skip]
    return {str(p.relative_to(root)): (s.st_ino, s.st_size, s.st_mtime_ns) for p in files for s in [p.stat()]}


def params_file(tmp_path: Path, override: dict[str, Any] | str) -> Path:
    """Tiny params with ``override`` applied, or the literal YAML text ``override``."""
    path = tmp_path / "params.yaml"
    text = override if isinstance(override, str) else yaml.safe_dump(tiny_params(**override), sort_keys=False)
    path.write_text(text)
    return path


def assert_refused(done: subprocess.CompletedProcess[str], fragments: tuple[str, ...]) -> None:
    """A stage process's refusal: exit 2, no traceback, one ERROR line holding every fragment."""
    assert done.returncode == 2, f"exit {done.returncode}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"


def assert_raises_naming(
    call: Callable[[], object], fragments: tuple[str, ...], kind: type[Exception] = DiffQuantError
) -> None:
    """``call`` raises ``kind`` (a ``DiffQuantError``: the stage process would exit 2 with one ERROR line, no traceback)
    and the first line of its message, the ERROR line, holds every fragment."""
    with pytest.raises(kind) as info:
        call()
    first = str(info.value).splitlines()[0]
    for fragment in fragments:
        assert fragment in first, f"{fragment!r} not in {first!r}"


# (stage, params override or YAML text, fragments the ERROR line must contain)
Case = tuple[str, dict[str, Any] | str, tuple[str, ...]]

# Refused by the params loader (diffquant.config.load), which every stage calls before any work.
LOADER_CASES: dict[str, Case] = {
    # wrong type
    "string_for_int": ("train", {"train": {"epochs": "ten"}}, ("train.epochs", "expected an integer")),
    "float_for_int": ("split", {"window": {"context": 96.5}}, ("window.context", "expected an integer")),
    "scalar_for_list": ("train", {"model": {"head": {"dense": 64}}}, ("model.head.dense", "a list of")),
    "bool_for_number": ("sanity", {"loss": {"lambda_bias": True}}, ("loss.lambda_bias", "expected a number")),
    "unknown_choice": ("train", {"loss": {"type": "sharp"}}, ("loss.type", "one of")),
    "unquoted_date": ("split", "split:\n  val_start: 2025-04-01\n", ("split.val_start", '"2025-04-01"', "quotes")),
    "not_a_date": ("split", {"split": {"val_start": "April"}}, ("split.val_start", "YYYY-MM-DD")),
    "not_a_mapping": ("train", "- seed\n- 42\n", ("params must be a mapping",)),
    "invalid_yaml": ("train", "train: [1, 2\n", ("not valid YAML",)),
    # out of range
    "negative_commission": ("evaluate", {"sim": {"commission": -0.1}}, ("sim.commission", "out of range")),
    "psr_gate_above_one": ("evaluate", {"registry": {"min_psr": 1.5}}, ("registry.min_psr", "out of range")),
    "zero_lr": ("train", {"train": {"lr": 0.0}}, ("train.lr", "out of range")),
    "probability_above_one": ("train", {"train": {"mirror_prob": 1.5}}, ("train.mirror_prob", "out of range")),
    "timeframe_above_a_day": ("aggregate", {"data": {"timeframe_minutes": 2880}}, ("data.timeframe_minutes",)),
    "cdar_alpha_of_one": ("train", {"loss": {"cdar_alpha": 1.0}}, ("loss.cdar_alpha", "out of range (0.0, 1.0)")),
    "zero_dd_temperature": ("sanity", {"loss": {"dd_temperature": 0.0}}, ("loss.dd_temperature", "out of range")),
    # unknown key
    "unknown_key": ("train", {"train": {"epoch": 5}}, ("unknown key(s) train.epoch", "allowed here")),
    "unknown_section": ("download", {"trian": {"epochs": 5}}, ("unknown key(s) trian",)),
    # cross-field rules
    "heads_do_not_divide": ("train", {"model": {"itransformer": {"n_heads": 3}}}, ("model.itransformer.d_model",)),
    "unknown_backbone": ("train", {"model": {"backbone": "mamba"}}, ("model.backbone", "one of", "linear_attention")),
    "patchtst_heads_do_not_divide": (
        "train",
        {"model": {"backbone": "patchtst", "patchtst": {"n_heads": 3}}},
        ("model.patchtst.d_model (32)", "model.patchtst.n_heads (3)"),
    ),
    "patch_longer_than_window": (
        "train",
        {"model": {"backbone": "patchtst", "patchtst": {"patch_len": 97}}},
        ("model.patchtst.patch_len (97)", "window.context (96)"),
    ),
    "patch_stride_skips_bars": (
        "train",
        {"model": {"backbone": "patchtst", "patchtst": {"stride": 17}}},
        ("model.patchtst.stride (17)", "model.patchtst.patch_len (16)"),
    ),
    "dlinear_kernel_longer_than_window": (
        "train",
        {"model": {"backbone": "dlinear", "dlinear": {"kernel": 97}}},
        ("model.dlinear.kernel (97)", "window.context (96)"),
    ),
    "dlinear_individual_not_a_bool": (
        "train",
        {"model": {"dlinear": {"individual": "yes"}}},
        ("model.dlinear.individual",),
    ),
    "tcn_kernel_of_one": ("train", {"model": {"tcn": {"kernel": 1}}}, ("model.tcn.kernel", "out of range")),
    "vsn_lstm_without_hidden_units": ("train", {"model": {"vsn_lstm": {"hidden": 0}}}, ("model.vsn_lstm.hidden",)),
    "linear_attention_heads_do_not_divide": (
        "train",
        {"model": {"backbone": "linear_attention", "linear_attention": {"n_heads": 5}}},
        ("model.linear_attention.d_model (32)", "model.linear_attention.n_heads (5)"),
    ),
    "series_without_a_series_backbone": (
        "train",
        {"model": {"series": True}},
        ("model.series", "model.backbone 'itransformer'", "tcn, vsn_lstm, linear_attention"),
    ),
    "unknown_model_kind": ("train", {"model": {"kind": "basket"}}, ("model.kind", "basket")),
    "portfolio_heads_do_not_divide": (
        "train",
        {"model": {"portfolio": {"d_attn": 30, "n_heads": 4}}},
        ("model.portfolio.d_attn (30)", "model.portfolio.n_heads (4)"),
    ),
    "portfolio_without_leverage": ("train", {"model": {"portfolio": {"leverage": 0.0}}}, ("model.portfolio.leverage",)),
    "portfolio_on_the_series_path": (
        "train",
        {"model": {"kind": "portfolio", "backbone": "tcn", "series": True}},
        ("model.kind is 'portfolio'", "model.series"),
    ),
    "unknown_backbone_key": ("train", {"model": {"tcn": {"layers": 3}}}, ("unknown key(s) model.tcn.layers", "levels")),
    "horizon_within_lag": ("split", {"window": {"horizon": 2}, "sim": {"execution_lag_bars": 2}}, ("window.horizon",)),
    "momentum_longer_than_window": (
        "train",
        {"baselines": {"momentum_lookbacks": [24, 96]}},
        ("baselines.momentum_lookbacks", "window.context"),
    ),
    "band_upside_down": ("train", {"loss": {"band_low": 0.2, "band_high": 0.1}}, ("loss.band_low", "loss.band_high")),
    "regime_weights_upside_down": (
        "train",
        {"loss": {"regime_min_weight": 2.0, "regime_max_weight": 1.0}},
        ("loss.regime_min_weight (2.0)", "loss.regime_max_weight (1.0)"),
    ),
    "regime_without_regularisers": (
        "sanity",
        {"loss": {"type": "sharpe", "regime_power": 1.0}},
        ("loss.regime_power", "loss.type", "'sharpe'"),
    ),
    "regime_power_out_of_range": ("train", {"loss": {"regime_power": 5.0}}, ("loss.regime_power", "out of range")),
    "unknown_regime_reference": ("train", {"loss": {"regime_reference": "median"}}, ("loss.regime_reference",)),
    "grid_address_not_an_address": (
        "train",
        {"train": {"grid_address": "the cloud"}},
        ("train.grid_address", "'the cloud'", "host:port"),
    ),
    "retired_grid_storage": ("train", {"train": {"grid_storage": "postgresql://x/y"}}, ("train.grid_storage",)),
    "gpu_share_above_one": ("train", {"train": {"gpus_per_unit": 1.5}}, ("train.gpus_per_unit", "out of range")),
    "duplicate_seeds": ("train", {"train": {"seeds": [1, 1]}}, ("train.seeds", "distinct")),
    "no_seeds": ("train", {"train": {"seeds": []}}, ("train.seeds",)),
    "seed_not_an_integer": ("train", {"train": {"seeds": [1, "two"]}}, ("train.seeds[1]", "expected an integer")),
    "negative_cost_multiple": ("evaluate", {"eval": {"cost_multipliers": [1.0, -1.0]}}, ("eval.cost_multipliers",)),
    "dates_out_of_order": ("split", {"split": {"test_start": "2025-03-01"}}, ("split.test_start", "must be after")),
}

# Valid params that a stage refuses against its inputs (the data, the machine) before writing anything.
STAGE_CASES: dict[str, Case] = {
    "window_longer_than_train": (
        "split",
        {"window": {"context": 2800, "horizon": 100}},
        ("no training sample", "window.context + window.horizon = 2900", "split.train_start"),
    ),
    "train_split_without_bars": (
        "split",
        {"split": {"train_start": "2023-01-01", "val_start": "2023-06-01"}},
        ("no training sample", "holds 0 bars"),
    ),
    "quarter_without_bars": (
        "split",
        {"split": {"backtest_start": "2026-01-01", "backtest_end": "2026-04-01"}},
        ("split.backtest_start .. split.backtest_end", "holds no bar"),
    ),
    "quarter_after_the_data": ("split", {"split": {"backtest_end": "2026-02-01"}}, ("split.backtest_end",)),
    "timeframe_not_divisible": (
        "aggregate",
        {"data": {"timeframe_minutes": 7}},
        ("data.timeframe_minutes (7)", "source resolution (5 min)"),
    ),
    "timeframe_of_other_features": ("split", {"data": {"timeframe_minutes": 60}}, ("data.timeframe_minutes",)),
    "batch_larger_than_data": (
        "train",
        {"train": {"batch_size": 4096}},
        ("train.batch_size (4096)", "fold 2025-07-01/pooled"),
    ),
}
if not torch.cuda.is_available():
    STAGE_CASES["cuda_without_gpu"] = ("train", {"train": {"device": "cuda"}}, ("train.device",))

PARAMS_CASES = {**LOADER_CASES, **STAGE_CASES}

# One case per kind of refusal, also run as a real process: the loader, a data stage, the train stage
# (a checkpoint refusal runs through evaluate below).
END_TO_END = ("unknown_key", "window_longer_than_train", "batch_larger_than_data")


@pytest.mark.parametrize("case", LOADER_CASES)
def test_loader_refuses_bad_params_naming_the_key(tmp_path: Path, case: str) -> None:
    _, override, fragments = LOADER_CASES[case]
    path = params_file(tmp_path, override)
    assert_raises_naming(lambda: load(path), (str(path), *fragments), ConfigError)


@pytest.mark.parametrize("case", PARAMS_CASES)
def test_stage_refuses_bad_params_without_output(in_root: Path, tmp_path: Path, case: str) -> None:
    """The stage's ``main`` in this process: a ``DiffQuantError`` naming the key, the workspace unchanged."""
    name, override, fragments = PARAMS_CASES[case]
    path = params_file(tmp_path, override)
    before = snapshot(in_root)
    assert_raises_naming(lambda: run_main(name, "--params", str(path)), fragments)
    assert snapshot(in_root) == before


@pytest.mark.slow
@pytest.mark.parametrize("case", END_TO_END)
def test_bad_params_end_to_end(root: Path, tmp_path: Path, case: str) -> None:
    """The whole contract through ``python -m stages.<stage>``: exit 2, one ERROR line, no traceback, no output."""
    name, override, fragments = PARAMS_CASES[case]
    path = params_file(tmp_path, override)
    before = snapshot(root)
    assert_refused(stage(name, root, "--params", str(path)), fragments)
    assert snapshot(root) == before


# --- command line ----------------------------------------------------------------------------------------------------


def test_unknown_option_prints_usage_and_exits_2(in_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(in_root)
    with pytest.raises(SystemExit) as info:
        run_main("train", "--epochs", "3")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and "error: unrecognized arguments: --epochs 3" in err
    assert snapshot(in_root) == before


def test_a_grid_address_that_is_no_address_is_refused_before_anything_runs(in_root: Path) -> None:
    before = snapshot(in_root)
    assert_raises_naming(lambda: run_main("train", "--grid-address", "ray://head"), ("--grid-address", "host:port"))
    assert snapshot(in_root) == before


def test_missing_params_file_is_one_error_line(in_root: Path) -> None:
    before = snapshot(in_root)
    assert_raises_naming(
        lambda: run_main("split", "--params", "no/such/params.yaml"), ("no/such/params.yaml", "file not found")
    )
    assert snapshot(in_root) == before


def test_missing_upstream_output_names_the_stage_to_run(in_root: Path, tmp_path: Path) -> None:
    before = snapshot(in_root)
    assert_raises_naming(
        lambda: run_main("aggregate", "--raw", str(tmp_path / "empty")), ("not found", "download stage")
    )
    assert snapshot(in_root) == before


# --- checkpoints reaching the stages that load them ------------------------------------------------------------------


def _save_policy(path: Path, model_override: dict[str, Any], feature_names: list[str]) -> None:
    """A checkpoint as the trainer writes it, for a policy of another configuration."""
    cfg: ModelConfig = from_dict(deep_update(deep_update({}, TINY), {"model": model_override})).model
    context = 96
    model = PolicyNetwork(cfg, len(feature_names), context)
    spec = checkpoint.policy_spec(cfg, feature_names, context)
    checkpoint.save(path, {"model_state": model.state_dict(), "spec": {"policy": spec}, "epoch": 1})


def _names(root: Path) -> list[str]:
    return next(iter(read_folds(root / "data_source" / "split")[0].assets.values())).val.feature_names


def _seed_dir(root: Path, train_dir: Path) -> Path:
    """Where the train stage keeps seed 42 of the first fold's group for the tiny params under ``root``."""
    (group,) = fold_groups(load(root / "params.yaml"), read_folds(root / "data_source" / "split")[0])
    return keyed_folders({"policy": train_dir})(group, "policy") / "seed_42"


CHECKPOINTS: dict[str, tuple[Callable[[Path, Path], None], tuple[str, ...]]] = {
    "other_model_shape": (
        lambda path, root: _save_policy(path, {"itransformer": {"d_model": 16}}, _names(root)),
        ("best.pt", "another configuration", "model"),
    ),
    "other_features": (
        lambda path, root: _save_policy(path, {}, _names(root)[:4]),
        ("best.pt", "another configuration", "feature_names"),
    ),
    "truncated": (
        lambda path, root: (
            _save_policy(path, {}, _names(root)),
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
        ),
        ("best.pt", "not a readable checkpoint"),
    ),
    "garbage": (lambda path, root: path.write_bytes(b"\x00not a checkpoint" * 64), ("best.pt", "not a readable")),
    "missing": (lambda path, root: None, ("best.pt", "checkpoint not found")),
}


@pytest.mark.parametrize("case", CHECKPOINTS)
def test_threshold_opt_refuses_a_bad_checkpoint(in_root: Path, tmp_path: Path, case: str) -> None:
    make, fragments = CHECKPOINTS[case]
    train_dir = tmp_path / "train"
    _seed_dir(in_root, train_dir).mkdir(parents=True)
    make(_seed_dir(in_root, train_dir) / "best.pt", in_root)
    before = snapshot(in_root)
    out = tmp_path / "thresholds"
    args = ("--train-dir", str(train_dir), "--out", str(out), "--metrics", str(tmp_path / "thresholds.json"))
    assert_raises_naming(lambda: run_main("threshold_opt", *args), fragments)
    assert not out.exists() and not (tmp_path / "thresholds.json").exists()
    assert snapshot(in_root) == before


@pytest.fixture(scope="module")
def eval_root(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with an open MLflow run and every fold's thresholds, to show a refused checkpoint logs nothing
    anywhere."""
    dst = tmp_path_factory.mktemp("evaluate")
    tuned = TunedModel(Hysteresis(), "default", 1.0, 0.5, 10.0, 2, [0.0, 1.0])
    thresholds = TunedThresholds("best", {"42": tuned}, {"42": tuned}, MomentumChoice(24, 0.0, [0.0]))
    for fold in read_folds(root / "data_source" / "split"):
        write_choices(dst / "thresholds" / fold.fold.name, dict.fromkeys(fold.assets, thresholds))
    with pytest.MonkeyPatch.context() as mp:
        use_root(mp, dst)
        run = tracking.start_run(dst, "bad-checkpoint", {})
    (dst / "run.json").write_text(json.dumps({"run_id": run.run_id}))
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("case", ["other_features", "truncated"])
def test_evaluate_refuses_a_bad_checkpoint_end_to_end(root: Path, eval_root: Path, tmp_path: Path, case: str) -> None:
    make, fragments = CHECKPOINTS[case]
    train_dir = tmp_path / "train"
    _seed_dir(root, train_dir).mkdir(parents=True)
    make(_seed_dir(root, train_dir) / "best.pt", root)
    before = snapshot(eval_root, skip="mlruns")
    out = tmp_path / "evaluate"
    done = stage(
        "evaluate",
        eval_root,
        "--params",
        str(root / "params.yaml"),
        "--split",
        str(root / "data_source/split"),
        "--train-dir",
        str(train_dir),
        "--thresholds",
        "thresholds",
        "--run-file",
        "run.json",
        "--out",
        str(out),
        "--metrics",
        str(tmp_path / "evaluate.json"),
    )
    assert_refused(done, fragments)
    assert not out.exists() and not (tmp_path / "evaluate.json").exists()
    assert snapshot(eval_root, skip="mlruns") == before  # the store itself is checked through MLflow below
    run_id = json.loads((eval_root / "run.json").read_text())["run_id"]
    assert tracking.open_run(eval_root, run_id).client.get_run(run_id).data.metrics == {}


# --- funding asked for, none in the data -----------------------------------------------------------------------------


def test_funding_on_with_a_file_source_without_funding(
    tmp_path: Path, make_bars: Callable[..., pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The download stage only warns (the bars are fine); the features stage, which would use funding, refuses."""
    make_bars(n=400, minutes=5).to_csv(tmp_path / "bars.csv", index=False)
    params = params_file(tmp_path, {"data": {"source": "file", "path": "bars.csv"}, "sim": {"funding": True}})
    use_root(monkeypatch, tmp_path)
    run_main("download", "--params", str(params))
    run_main("aggregate", "--params", str(params))
    before = snapshot(tmp_path)
    assert_raises_naming(
        lambda: run_main("features", "--params", str(params)),
        ("sim.funding is true", "data.source='file'", "data.funding_path", "sim.funding=false"),
    )
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "data_source" / "features").exists()
