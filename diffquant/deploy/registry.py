"""Publishing what the evaluate stage judged: MLflow models, their datasets, the registry and its honest aliases.

Every seed's policy is logged as a model of its own run (``policy``) and the seed ensemble as a model of the
experiment run (``policy_ensemble``); the ensemble is registered as ``diffquant-<experiment>``. The newest version
gets the alias ``candidate``; ``champion`` moves to it only when every gate of ``registry`` passes on the gate
quarter (out of sample), and otherwise stays where it was. Version numbers are MLflow's business: nothing the
pipeline writes (report, metrics) depends on them, so ``dvc.lock`` stays byte-identical across repros.
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

from diffquant import tracking
from diffquant.config import RegistryConfig
from diffquant.data.contracts import sha256
from diffquant.deploy.bundle import PolicyBundle
from diffquant.deploy.mlflow_model import log_policy_model

log = logging.getLogger("diffquant.registry")


@dataclass(frozen=True)
class Gate:
    key: str  # psr, dsr, beats_buy_and_hold, spa: the model version's tag is gate.<key>
    label: str
    value: float | None
    threshold: float
    passed: bool
    below: bool = False  # the value must lie below the threshold (a p-value), not above it

    def describe(self) -> str:
        shown = "n/a" if self.value is None else f"{self.value:.3f}"
        sign = "<" if self.below else ">"
        return f"{self.label} {shown} {sign if self.passed else f'is not {sign}'} {self.threshold:g}"


def registered_name(experiment: str) -> str:
    return f"diffquant-{experiment}"


def judge_gates(ensemble: dict[str, Any], cfg: RegistryConfig) -> list[Gate]:
    """The champion's gates on the ensemble's entry of the gate quarter (``evaluate.json``'s numbers)."""
    sig = ensemble["significance"]

    def gate(key: str, label: str, value: float | None, threshold: float) -> Gate:
        return Gate(key, label, value, threshold, value is not None and value > threshold)

    gates = [gate("psr", "PSR", sig["psr"], cfg.min_psr), gate("dsr", "DSR", sig["dsr"], cfg.min_dsr)]
    if cfg.beat_buy_and_hold:
        low = sig["sharpe_minus_benchmark_ci_low"]
        gates.append(gate("beats_buy_and_hold", "Sharpe minus buy-and-hold, 95% interval low", low, 0.0))
    return gates


def gates_summary(gates: list[Gate], cfg: RegistryConfig) -> dict[str, Any]:
    """The gates as ``evaluate.json`` keeps them."""
    return {
        "split": cfg.gate_split,
        "champion": all(g.passed for g in gates),
        "gates": [
            {"key": g.key, "label": g.label, "value": g.value, "threshold": g.threshold, "passed": g.passed}
            for g in gates
        ],
    }


def gates_markdown(experiment: str, gates: list[Gate], cfg: RegistryConfig) -> str:
    """The report's registry section: which gate failed, when one did."""
    name = registered_name(experiment)
    lines = [
        "## Registry",
        "",
        f"The seed ensemble is registered as `{name}` with the alias `candidate`. Gates for `champion`, on the "
        f"{cfg.gate_split} quarter:",
        "",
    ]
    lines += [f"- {'passed' if g.passed else 'FAILED'}: {g.describe()}" for g in gates]
    failed = [g.label for g in gates if not g.passed]
    verdict = (
        f"All gates pass: `{name}@champion` is this version."
        if not failed
        else f"Not promoted to `champion` (failed: {', '.join(failed)}); `champion` stays where it was, if anywhere."
    )
    return "\n".join([*lines, "", verdict, ""])


def log_datasets(run: tracking.Run, files: dict[str, Path], context: str, root: Path, hashes: dict[str, str]) -> None:
    """``mlflow.log_input`` of data files by reference: name, path in the repo, digest = the file's sha256 (its
    first 32 hex digits: MLflow keeps 36 characters), full hash and size in the profile."""
    inputs = []
    for name, path in files.items():
        source = json.dumps({"uri": str(path.relative_to(root))})
        profile = json.dumps({"sha256": hashes[name], "bytes": path.stat().st_size})
        dataset = Dataset(name, hashes[name][:32], "local", source, profile=profile)
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
    run.client.log_inputs(run.run_id, datasets=inputs)


def log_models(
    bundle: PolicyBundle,
    checkpoints: dict[str, Path],
    parent: tracking.Run,
    seed_runs: dict[str, tracking.Run],
    example: pd.DataFrame,
) -> Any:
    """Each member as ``policy`` of its seed's run, the whole bundle as ``policy_ensemble`` of the parent run."""
    for member in bundle.members:
        single = replace(bundle, members=(member,))
        with mlflow.start_run(run_id=seed_runs[member.name].run_id):
            log_policy_model(single, checkpoints, "policy", example)
    with mlflow.start_run(run_id=parent.run_id):
        return log_policy_model(bundle, checkpoints, "policy_ensemble", example)


def register(parent: tracking.Run, model_uri: str, experiment: str, gates: list[Gate]) -> str:
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
    seed_runs: dict[str, tracking.Run]  # member name -> its training run
    parent: tracking.Run
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
