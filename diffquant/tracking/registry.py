"""Publishing what a stage judged: MLflow models, their datasets, the registry and its honest aliases.

The evaluate stage logs every seed's policy as a model of its own run (``policy``) and the seed ensemble as a model
of the experiment run (``policy_ensemble``), registered as ``diffquant-<experiment>``; a walk-forward study publishes
through the same ``log_datasets`` and ``register`` (``tracking.study_registry``). The newest version gets the alias
``candidate``; ``champion`` moves to it only when every gate (``deploy.gates``) passed, and otherwise stays where it
was. Version numbers are MLflow's business: nothing the pipeline writes depends on them,
so ``dvc.lock`` stays byte-identical across repros.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag

from diffquant.deploy.bundle import PolicyBundle
from diffquant.deploy.gates import Gate, registered_name
from diffquant.io import sha256
from diffquant.tracking.models import log_policy_model
from diffquant.tracking.runs import Run

log = logging.getLogger("diffquant.registry")


def log_datasets(run: Run, files: dict[str, Path], context: str, root: Path, hashes: dict[str, str]) -> None:
    """``mlflow.log_input`` of data files by reference: name, path in the repo (absolute outside it), digest = the
    file's sha256 (its first 32 hex digits: MLflow keeps 36 characters), full hash and size in the profile."""
    inputs = []
    for name, path in files.items():
        where = path.resolve()
        uri = where.relative_to(root.resolve()) if where.is_relative_to(root.resolve()) else where
        source = json.dumps({"uri": str(uri)})
        profile = json.dumps({"sha256": hashes[name], "bytes": path.stat().st_size})
        dataset = Dataset(name, hashes[name][:32], "local", source, profile=profile)
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
    run.client.log_inputs(run.run_id, datasets=inputs)


def log_models(
    bundle: PolicyBundle,
    checkpoints: dict[str, Path],
    parent: Run,
    seed_runs: dict[str, Run],
    example: pd.DataFrame,
) -> Any:
    """Each member as ``policy`` of its seed's run, the whole bundle as ``policy_ensemble`` of the parent run."""
    for member in bundle.members:
        single = replace(bundle, members=(member,))
        with mlflow.start_run(run_id=seed_runs[member.name].run_id):
            log_policy_model(single, checkpoints, "policy", example)
    with mlflow.start_run(run_id=parent.run_id):
        return log_policy_model(bundle, checkpoints, "policy_ensemble", example)


def register(parent: Run, model_uri: str, experiment: str, gates: list[Gate]) -> str:
    """Register the ensemble, alias it ``candidate``, and ``champion`` when every gate passed; returns the version."""
    client = parent.client
    name = registered_name(experiment)
    version = mlflow.register_model(model_uri, name, tags={"run_id": parent.run_id}).version
    for gate in gates:
        client.set_model_version_tag(name, version, f"gate.{gate.key}", "passed" if gate.passed else "failed")
    client.set_registered_model_alias(name, "candidate", version)
    if all(g.passed for g in gates):
        client.set_registered_model_alias(name, "champion", version)
        log.info("%s version %s: candidate and champion (every gate passed)", name, version)
    else:
        failed = "; ".join(g.describe() for g in gates if not g.passed)
        log.info("%s version %s: candidate; not champion (%s)", name, version, failed)
    return str(version)


@dataclass(frozen=True)
class Judged:
    """What the evaluate stage hands over for publishing: the trained seeds, their runs, the data they met."""

    bundle: PolicyBundle
    checkpoints: dict[str, Path]  # member name -> its checkpoint file
    seed_runs: dict[str, Run]  # member name -> its training run
    parent: Run
    train_files: dict[str, Path]  # what the seeds trained and were selected on (train, val)
    judged_files: dict[str, Path]  # the quarters the ensemble was judged on
    example: pd.DataFrame  # model-input bars for the signature and the input example


def publish(judged: Judged, root: Path, experiment: str, gates: list[Gate]) -> str:
    """Log the datasets and models, register the ensemble and set its aliases; returns the registered version."""
    hashes = {n: sha256(p) for n, p in {**judged.train_files, **judged.judged_files}.items()}
    for run in judged.seed_runs.values():
        log_datasets(run, judged.train_files, "training", root, hashes)
    log_datasets(judged.parent, judged.judged_files, "evaluation", root, hashes)
    info = log_models(judged.bundle, judged.checkpoints, judged.parent, judged.seed_runs, judged.example)
    return register(judged.parent, info.model_uri, experiment, gates)
