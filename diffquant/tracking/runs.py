"""MLflow runs: the store, tags, the seed and study runs (DESIGN section 5).

Store: ``sqlite:///<repo>/mlruns/mlflow.db`` with artifacts under ``<repo>/mlruns/artifacts`` (absolute paths: DVC
runs stages from temp copies), or whatever ``MLFLOW_TRACKING_URI`` names (a team server). One experiment
``diffquant``; one parent run per pipeline execution, opened by train, with one child run per seed's model;
threshold-opt and evaluate log into both.
``mlflow`` is imported lazily so the library stays cheap to import, and telemetry is switched off first.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from diffquant.errors import DiffQuantError
from diffquant.io import json_digest

EXPERIMENT = "diffquant"
# MLflow 3 opens an experiment without this tag in its GenAI view; this one opens on the model-training runs table
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"

log = logging.getLogger(__name__)


class TrackingError(DiffQuantError):
    """The MLflow store can not be reached or used."""


def _mlflow():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    import mlflow

    return mlflow


def store_root(root: Path) -> Path:
    """The repository whose ``mlruns/`` holds the store: ``DVC_ROOT`` when set (for a queued experiment that is the
    parent repository, not the temp copy the stage runs in, so every experiment lands in the one store), else ``root``.
    """
    return Path(os.environ.get("DVC_ROOT") or root).resolve()


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_root(root) / 'mlruns' / 'mlflow.db'}"


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any training, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as resp:
            if resp.status != 200:
                raise TrackingError(f"MLflow server {uri} answered /health with HTTP {resp.status}")
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(
            f"MLFLOW_TRACKING_URI={uri} is not reachable ({exc}); start the server or unset MLFLOW_TRACKING_URI to "
            "use the local store under mlruns/"
        ) from None


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise opening a sqlite store: two queued experiments creating a fresh database at once race on its schema
    migration and one crashes (alembic: 'expected to match one row ... 0 found')."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    folder = Path(uri.removeprefix("sqlite:///")).parent
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".store.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _client_and_experiment(root: Path) -> tuple[Any, str]:
    uri = tracking_uri(root)
    check_reachable(uri)
    with _store_lock(uri):
        return _open_store(root, uri)


def _open_store(root: Path, uri: str) -> tuple[Any, str]:
    mlflow = _mlflow()
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:  # a store made before the tag was set
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        return client, exp.experiment_id
    location = None if uri.startswith("http") else (store_root(root) / "mlruns" / "artifacts").as_uri()
    try:
        kind = {EXPERIMENT_KIND: MODEL_TRAINING}
        exp_id = client.create_experiment(EXPERIMENT, artifact_location=location, tags=kind)
    except Exception:  # another process created it first (queued experiments run concurrently)
        exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    return client, exp_id


def git_tags(root: Path) -> dict[str, str]:
    """Commit, dirty flag and DVC experiment name of the code that made the run."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    tags = {
        "git_commit": git("rev-parse", "HEAD") or "unknown",
        "git_dirty": str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower(),
    }
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


class Run:
    """A handle on one MLflow run; all logging is batched (one sqlite transaction per call)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        entities = _mlflow().entities
        items = [entities.Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float | int | None], step: int = 0, prefix: str = "") -> None:
        self.log_steps([(step, {f"{prefix}{k}": v for k, v in metrics.items()})])

    def log_history(self, history: list[dict[str, Any]], skip: set[str] = frozenset({"epoch"})) -> None:
        """Per-epoch curves: every numeric field of every record, at step = epoch."""
        self.log_steps([(int(rec["epoch"]), {k: v for k, v in rec.items() if k not in skip}) for rec in history])

    def log_steps(self, steps: Iterable[tuple[int, Mapping[str, Any]]]) -> None:
        """The metrics of many steps in few sqlite transactions (batches of 500); what is not a number (None, NaN,
        a bool, text) is left out, so callers pass their records as they are."""
        entities = _mlflow().entities
        now = int(time.time() * 1000)
        items = [
            entities.Metric(k, float(v), now, step)
            for step, metrics in steps
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and v == v
        ]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def logged_steps(self, key: str) -> set[int]:
        """The steps at which ``key`` is already in the run (a resumed run logs only the others)."""
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def set_tags(self, tags: Mapping[str, str]) -> None:
        entities = _mlflow().entities
        self.client.log_batch(self.run_id, tags=[entities.RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


VERSIONED = ("torch", "numpy", "pandas", "mlflow", "dvc", "optuna", "arch", "statsmodels", "ray")


def library_versions() -> dict[str, str]:
    """``version.<package>`` tags: a result is only reproducible with the versions that produced it."""
    import platform
    from importlib import metadata

    versions = {"version.python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[f"version.{name}"] = "not installed"
    return versions


def start_run(root: Path, run_name: str, tags: Mapping[str, str]) -> Run:
    client, exp_id = _client_and_experiment(root)
    run = client.create_run(exp_id, run_name=run_name, tags={**git_tags(root), **library_versions(), **tags})
    return Run(client, run.info.run_id)


def open_run(root: Path, run_id: str) -> Run:
    """Continue a run opened earlier (a train stage resumed after a kill)."""
    client, _ = _client_and_experiment(root)
    try:
        client.get_run(run_id)
    except Exception as exc:
        raise TrackingError(
            f"MLflow run {run_id} is not in {tracking_uri(root)}: {exc}. Re-run the train stage (dvc repro -f train)"
        ) from None
    return Run(client, run_id)


def start_child(parent: Run, run_name: str, tags: Mapping[str, str] | None = None) -> Run:
    """A nested run under ``parent`` (one seed's model, one HPO trial); the caller finishes it."""
    run = parent.client.create_run(
        parent.client.get_run(parent.run_id).info.experiment_id,
        run_name=run_name,
        tags={"mlflow.parentRunId": parent.run_id, **(tags or {})},
    )
    return Run(parent.client, run.info.run_id)


@contextmanager
def child_run(parent: Run, run_name: str, tags: Mapping[str, str] | None = None) -> Iterator[Run]:
    """``start_child`` finished when the block ends (FAILED if it raised)."""
    child = start_child(parent, run_name, tags)
    try:
        yield child
    except BaseException:
        child.finish("FAILED")
        raise
    child.finish()


def search_runs(root: Path) -> Any:
    """All runs of the experiment as a DataFrame (``params.*``, ``metrics.*``, ``tags.*`` columns)."""
    mlflow = _mlflow()
    _, exp_id = _client_and_experiment(root)
    return mlflow.search_runs(experiment_ids=[exp_id], output_format="pandas")


def download_artifact(root: Path, run_id: str, artifact: str, dst: Path) -> Path | None:
    """One artifact of a run copied under ``dst``; None when the run has none by that path (a run logged before the
    artifact existed)."""
    client, _ = _client_and_experiment(root)
    folder, _, name = artifact.rpartition("/")
    if name not in {Path(f.path).name for f in client.list_artifacts(run_id, folder or None)}:
        return None
    return Path(client.download_artifacts(run_id, artifact, str(dst)))


def read_run_id(path: Path) -> str:
    """The MLflow parent run that train opened, from its run file."""
    try:
        return json.loads(Path(path).read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        raise TrackingError(f"{path}: no MLflow run id; run the train stage first (dvc repro -f train)") from None


class StudyRuns:
    """A study in MLflow: one parent run per execution of a train stage (``role``: ``study`` for the policies,
    ``proxy`` for the MSE proxy), one child per fold x model group x seed (and kind), each fed by the ``SeedHooks``
    that :meth:`hooks` returns.

    The parent's id and its children's go to ``run_file``: evaluate logs the study's results into that parent, and a
    train stage restarted after a kill (some group ``begin``-s resuming) continues the runs recorded there, logging
    only the epochs they lack. The record carries a digest of the params: another experiment in the same workspace
    whose units come from the model cache (they "resume" too) opens its own runs instead of writing into the last
    experiment's. Without a run file, or with nothing to resume, every start opens new runs (a resumed seed's
    earlier epochs are then carried into its new child).
    """

    def __init__(
        self,
        root: Path,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        run_file: Path | None = None,
        role: str = "study",
    ):
        self.root, self.run_name, self.run_file, self.role = root, run_name, run_file, role
        self.params, self.tags = dict(params), dict(tags)
        self.children: dict[str, str] = {}  # "<fold>/<group>/<kind>/seed_<s>" -> run id
        self.resuming = False  # set by a group's begin() before the parent opens
        self._parent: Run | None = None

    @property
    def parent(self) -> Run:
        """Opened on first use: the recorded run when resuming, else a new one."""
        if self._parent is None:
            recorded = self._recorded()
            if recorded is not None:
                self._parent, self.children = open_run(self.root, recorded["run_id"]), dict(recorded["children"])
                log.info("resuming MLflow run %s", self._parent.run_id)
            else:
                self._parent = start_run(self.root, self.run_name, {**self.tags, "role": self.role})
                self._parent.log_params(self.params)
                self._save()
        return self._parent

    def _recorded(self) -> dict[str, Any] | None:
        if not (self.resuming and self.run_file is not None and self.run_file.exists()):
            return None
        recorded = json.loads(self.run_file.read_text())
        if recorded.get("params") != json_digest(self.params):
            return None
        return recorded if isinstance(recorded.get("children"), dict) else None

    def _save(self) -> None:
        if self.run_file is None:
            return
        record = {
            "run_id": self.parent.run_id,
            "experiment": self.run_name,
            "params": json_digest(self.params),
            "children": self.children,
        }
        self.run_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.run_file.with_name(self.run_file.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, self.run_file)

    def child(self, key: str, name: str, tags: Mapping[str, str], finished: list[dict[str, Any]]) -> Run:
        """The unit's run: the recorded one (its missing epochs logged), or a new child with ``finished`` logged."""
        parent = self.parent  # opened first: a resumed parent brings its recorded children
        if key in self.children:
            run = open_run(self.root, self.children[key])
            logged = run.logged_steps("train_loss")
            run.log_history([r for r in finished if r["epoch"] not in logged])  # a kill can fall between the two
            return run
        run = start_child(parent, name, tags)
        self.children[key] = run.run_id
        self._save()
        run.log_params({"seed": tags["seed"]})
        run.log_history(finished)
        return run

    def hooks(self, fold: str, group: str, kind: str) -> _FoldSeedHooks:
        return _FoldSeedHooks(self, fold, group, kind)


class _FoldSeedHooks:
    """``SeedHooks`` of one fold's model group: a child run per seed named ``<fold> <group> <kind> seed <s>``."""

    def __init__(self, study: StudyRuns, fold: str, group: str, kind: str) -> None:
        self.study, self.fold, self.group, self.kind = study, fold, group, kind
        self._runs: dict[int, Run] = {}
        self._clock: dict[int, float] = {}

    def begin(self, resuming: bool) -> None:
        """Before any seed of any group starts: an interrupted run continues the study's recorded runs."""
        self.study.resuming |= resuming

    def started(self, seed: int, finished: list[dict[str, Any]]) -> None:
        key = f"{self.fold}/{self.group}/{self.kind}/seed_{seed}"
        tags = {"fold": self.fold, "group": self.group, "seed": str(seed), "role": f"{self.kind}_seed"}
        self._runs[seed] = self.study.child(key, f"{self.fold} {self.group} {self.kind} seed {seed}", tags, finished)
        self._clock[seed] = time.perf_counter()

    def epoch(self, seed: int, record: dict[str, Any]) -> None:
        now = time.perf_counter()
        self._runs[seed].log_history([{**record, "epoch_seconds": now - self._clock[seed]}])
        self._clock[seed] = now

    def finished(self, seed: int, outcome: Any) -> None:
        self._runs[seed].log_metrics(outcome.run_metrics(), step=len(outcome.result.history))
        self._runs[seed].finish()

    def failed(self, seed: int, exc: BaseException) -> None:
        """Until a restart resumes them, the store says why the seed's run and the parent stopped."""
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        for run in (self._runs.get(seed), self.study._parent):
            if run is not None:
                run.finish(status)
