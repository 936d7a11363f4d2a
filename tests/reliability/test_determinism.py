"""Determinism on CPU: two train-stage runs with the same seed on the same data give the same metrics, history and
weights; every MLflow run records what is needed to reproduce it (seed, data hash, library versions)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from diffquant.train import checkpoint
from tests.repo_copy import clone_tree, read_json, runs, stage, tiny_params

pytestmark = pytest.mark.slow

LIBRARIES = ("python", "torch", "numpy", "pandas", "mlflow", "dvc", "optuna")


def _train(repo: Path, name: str) -> Path:
    """One train-stage process on the CPU, writing under ``runs/<name>``."""
    out = repo / "runs" / name
    out.mkdir(parents=True)
    (out / "params.yaml").write_text(yaml.safe_dump(tiny_params(train={"device": "cpu"})))
    done = stage(
        "train",
        repo,
        "--params",
        str(out / "params.yaml"),
        "--out",
        f"runs/{name}/train",
        "--metrics",
        f"runs/{name}/train.json",
        "--run-file",
        f"runs/{name}/run.json",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_same_seed_same_metrics_weights_and_logged_provenance(prepared: Path, tmp_path: Path) -> None:
    repo = clone_tree(prepared, tmp_path / "repo")
    a, b = _train(repo, "a"), _train(repo, "b")

    assert read_json(a / "train.json") == read_json(b / "train.json")
    (seed_a,), (seed_b,) = (list((d / "train" / "pooled").glob("*/seed_42")) for d in (a, b))
    assert read_json(seed_a / "history.json") == read_json(seed_b / "history.json")
    for name in ("best.pt", "final.pt"):
        wa, wb = (checkpoint.load(d / name)["model_state"] for d in (seed_a, seed_b))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name

    parents = runs(repo, "study")
    assert {r.info.run_id for r in parents} == {read_json(d / "run.json")["run_id"] for d in (a, b)}
    children = runs(repo, "policy_seed")
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {r.info.run_id for r in parents}
    assert all(r.data.tags["seed"] == r.data.params["seed"] == "42" for r in children)
    data_hashes = set()
    for r in parents:
        tags = r.data.tags
        assert tags["seeds"] == "42" and r.data.params["train.seeds"] == "[42]"
        assert len(tags["data_hash"]) == 16
        data_hashes.add(tags["data_hash"])
        for lib in LIBRARIES:
            version = tags.get(f"version.{lib}", "")
            assert version[:1].isdigit(), f"version.{lib} = {version!r}"
        assert tags["version.torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert len(data_hashes) == 1
