"""Publishing what the evaluate stage judged: the data files as run inputs, the registry and its honest aliases.

``tracking.study_registry`` logs the newest fold's policies (each asset's seed ensemble, or the portfolio's book) as
MLflow models of the study run and registers each as ``diffquant-<experiment>-<NAME>``. The newest version gets the
alias ``candidate``; ``champion`` moves to it only when every gate (``deploy.gates``) passed, and otherwise stays
where it was. Version numbers are MLflow's business: nothing the pipeline writes depends on them, so ``dvc.lock``
stays byte-identical across repros.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag

from diffquant.deploy.gates import Gate, registered_name
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


def register(parent: Run, model_uri: str, experiment: str, gates: list[Gate]) -> str:
    """Register a model, alias it ``candidate``, and ``champion`` when every gate passed; returns the version."""
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
