"""Shared helpers for the reliability tests: a tiny git + DVC copy of the project, subprocess runs, MLflow reads.

The copy holds the tracked (and untracked, not ignored) files of this checkout, never its produced data or
MLflow store, and params small enough that a whole training run takes seconds: the slow tests kill, queue and
repeat real stage processes, so every second of a run counts several times.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

TINY: dict[str, Any] = {
    "split": {"train_start": "2025-02-01"},  # two months of training bars: ~115 samples
    "model": {
        "itransformer": {"d_model": 8, "n_heads": 2, "n_layers": 1, "d_ff": 16},
        "head": {"dense": [8]},
    },
    "train": {"epochs": 6, "batch_size": 16, "val_freq": 2, "select_min_rebalances": 1, "threads": 1, "seeds": [42]},
    "thresholds": {"trials": 3},
}


def env(**extra: str) -> dict[str, str]:
    """This process's environment without DVC/MLflow routing, offline, with git identity; ``python`` = this one."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_TRACKING"))}
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out.get('PATH', '')}"
    out.update(
        HF_HUB_OFFLINE="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        GIT_AUTHOR_NAME="ci",
        GIT_AUTHOR_EMAIL="ci@x",
        GIT_COMMITTER_NAME="ci",
        GIT_COMMITTER_EMAIL="ci@x",
    )
    out.update(extra)
    return out


def run(args: list[str], cwd: Path, timeout: float = 600, **extra_env: str) -> str:
    """Run a command that must succeed; on failure the assertion shows the tail of its output."""
    proc = subprocess.run(args, cwd=cwd, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc.stdout + proc.stderr


def dvc(*args: str, cwd: Path, timeout: float = 600) -> str:
    return run([sys.executable, "-m", "dvc", *args], cwd, timeout)


def deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    for k, v in update.items():
        base[k] = deep_update(dict(base.get(k, {})), v) if isinstance(v, dict) else v
    return base


def tiny_params(**override: Any) -> dict[str, Any]:
    """The project's params.yaml with :data:`TINY` (and ``override``) applied."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    return deep_update(deep_update(params, TINY), override)


def make_repo(dst: Path, params: dict[str, Any] | None = None) -> Path:
    """A committed git repository at ``dst`` with the project's source files and tiny params (DVC inits from
    the copied ``.dvc/config``)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        produced = rel.startswith(("outputs/", "mlruns/", "data_source/")) and not rel.startswith(
            "data_source/bundled/"
        )
        if (REPO / rel).is_file() and not produced and not rel.endswith("dvc.lock"):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    (dst / "params.yaml").write_text(yaml.safe_dump(params or tiny_params(), sort_keys=False))
    run(["git", "init", "-q"], dst)
    commit(dst, "tiny")
    return dst


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message, "--allow-empty"], repo)


def clone_tree(src: Path, dst: Path) -> Path:
    """A copy of a prepared repository (git, DVC cache and produced data included) that a test may change."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def stage(
    name: str, root: Path, *args: str, timeout: float = 300, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m stages.<name>`` with the code of this checkout and ``DVC_ROOT=root``; never raises on failure."""
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}", *args],
        cwd=REPO,
        env=env(DVC_ROOT=str(root), **extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def client(repo: Path) -> Any:
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")


def runs(repo: Path, role: str | None = None) -> list[Any]:
    """The runs of the ``diffquant`` experiment in ``repo``'s store, oldest first (nested runs included); with
    ``role``, only those tagged so (policy, policy_seed, proxy, proxy_seed, hpo ...)."""
    c = client(repo)
    exp = c.get_experiment_by_name("diffquant")
    assert exp is not None, f"no 'diffquant' experiment in {repo / 'mlruns' / 'mlflow.db'}"
    found = c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    return found if role is None else [r for r in found if r.data.tags.get("role") == role]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
