"""Study plumbing: storage (journal file or SQL database), study creation, sampler and pruner, the summary.

The study is created once (``create_study``), then any number of commands, on this or other machines, load it
(``load_study``): on a fresh SQL database, commands that create the schema together race and crash. A command's
trials train through the grid runner (:mod:`diffquant.search.rounds`); a sampler's seed only decides which params
are proposed.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from diffquant.config import WHERE_UNITS_RUN, Config, flatten
from diffquant.errors import DiffQuantError
from diffquant.io import json_digest
from diffquant.search.objective import search_space

PARENT_RUN_ATTR = "mlflow_parent_run_id"  # study user attribute: the MLflow run the trials are nested under


SETUP_ATTR = "setup"  # study user attribute: what every trial of the study must share (``setup``)


class StorageError(DiffQuantError):
    """The Optuna storage can not be opened, or holds no study of that name."""


class StudyMismatch(DiffQuantError):
    """A command would add trials to a study that was set up with other params, epochs or data."""


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def storage_kind(url: str) -> str:
    """``journal`` for a file path, else the SQLAlchemy dialect (``postgresql``, ``sqlite``, ``mysql`` ...)."""
    return url.split("://", 1)[0].split("+", 1)[0] if "://" in url else "journal"


def open_storage(url: str, root: Path) -> optuna.storages.BaseStorage:
    """A journal file (relative paths start at ``root``) or an SQL database named by an SQLAlchemy URL."""
    if storage_kind(url) == "journal":
        path = (Path(root) / url).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except ImportError:  # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not a requirement
        raise StorageError(
            f"optimize.storage {_redact(url)}: its database driver is not installed; name one that is, e.g. "
            "postgresql+psycopg2://user:password@host/db (requirements.txt installs psycopg2-binary)"
        ) from None
    except Exception as exc:  # SQLAlchemy's and Optuna's errors share no base class worth naming
        raise StorageError(
            f"optimize.storage {_redact(url)} can not be opened ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "check that the server runs, the database exists and the user may create tables"
        ) from None


def make_sampler(seed: int) -> optuna.samplers.TPESampler:
    """TPE seeded per command (host and process): two commands on one study, on one machine or two, should not
    propose the same params; ``constant_liar`` keeps the trials of one round (and other commands' running ones)
    apart. Which params get proposed is not part of a trial's result: its training seed is (``trial_seed``)."""
    host = zlib.crc32(socket.gethostname().encode())
    sampler_seed = int(np.random.SeedSequence([seed % 2**63, host, os.getpid()]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=sampler_seed, constant_liar=True)


def make_pruner(warmup_epochs: int) -> optuna.pruners.MedianPruner:
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup_epochs)


def create_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """Create the study (or find it): run once, before any worker starts."""
    return optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)


def load_study(
    storage: optuna.storages.BaseStorage, name: str, sampler: optuna.samplers.BaseSampler, pruner: Any
) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise StorageError(
            f"no study '{name}' in the storage; create it first (python -m stages.optimize --create-only "
            "with the same --storage and --study-name)"
        ) from None


def summarize(study: optuna.Study) -> dict[str, Any]:
    """Counts by state and the best trial. ``n_trials`` (complete + pruned: every configuration that was scored,
    fully or in part) is the number of trials a deflated Sharpe ratio must account for."""
    trials = study.get_trials(deepcopy=False)
    count = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    best = study.best_trial if count["COMPLETE"] else None
    return {
        "study_name": study.study_name,
        "n_trials": count["COMPLETE"] + count["PRUNED"],
        "n_complete": count["COMPLETE"],
        "n_pruned": count["PRUNED"],
        "n_failed": count["FAIL"],
        "n_running": count["RUNNING"] + count["WAITING"],
        "best_value": None if best is None else best.value,
        "best_trial": None if best is None else best.number,
        "best_seed": None if best is None else best.user_attrs.get("seed"),
        "best_params": {} if best is None else dict(best.params),
    }


def setup(cfg: Config, epochs: int, data_files: list[Path]) -> dict[str, Any]:
    """What makes trials comparable: the space, the epochs, the seed, the fixed params and the data (hashed)."""
    space = search_space(cfg)
    searched = {d.key for d in space} | {f"train.{k}" for k in WHERE_UNITS_RUN}  # where trials run: no setting
    fixed = {k: v for k, v in flatten(cfg.to_dict()).items() if k not in searched and not k.startswith("optimize.")}
    data = hashlib.sha256()
    for path in data_files:
        data.update(Path(path).read_bytes())
    return {
        "space": [[d.key, d.low, d.high, d.log] for d in space],
        "epochs": epochs,
        "seed": cfg.seed,
        "params_sha256": json_digest(fixed),
        "data_sha256": data.hexdigest()[:16],
    }


def check_setup(study: optuna.Study, expected: dict[str, Any]) -> None:
    """Record the setup on a new study; refuse to add trials to a study set up otherwise (its trials would not be
    comparable, and the best params would mean nothing)."""
    found = study.user_attrs.get(SETUP_ATTR)
    if found is None:
        study.set_user_attr(SETUP_ATTR, expected)
        return
    differ = sorted(k for k in expected if found.get(k) != expected[k])
    if differ:
        raise StudyMismatch(
            f"study '{study.study_name}' was set up with other {', '.join(differ)} (params.yaml outside the searched "
            "keys, --epochs, seed or data_source/split); use the same, or start a new --study-name"
        )
