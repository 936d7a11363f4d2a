"""The Ray engine: every unit a Ray task, on this machine (``train.grid_address: local``) or on a Ray cluster
(``auto``, or the head's ``host:port``). Imported only for a grid on Ray: the training path never needs ray.

- **Resources.** A unit's task asks for ``num_cpus`` = its thread count and, when the units train on a GPU,
  ``train.gpus_per_unit`` of one (fractions let several small units share a device). Ray retries a task whose
  process or node died (``MAX_RETRIES``), never one that raised (``retry_exceptions=False``): a unit's exception
  closes the grid to units not yet started and is raised, naming the unit, once the running ones have ended.
- **No shared file system.** The works go to the object store once (``ray.put`` of the whole list: each fold's data
  once, however many seeds train on it). A unit trains in a temp folder of its worker and sends each finished epoch's
  record and changed files (``last.pt``, ``best.pt``) to the hub, a small actor on the driver's node; its last files
  come back with its outcome. The driver alone writes the output folders and MLflow, epoch by epoch. A retried
  attempt asks the hub first for its unit's latest files and resumes after the last finished epoch wherever it lands;
  the hub ignores a superseded attempt's reports, and the driver drops an epoch it has already handed on.
- **Results never depend on where a unit ran.** The thread count is the unit's own (resolved by the driver), and a
  unit refuses to start, before it claims anything, on a node whose ``diffquant`` source is not the driver's (code
  hash). Joining a cluster ships the driver's ``diffquant`` package to every node (``runtime_env.py_modules``); the
  nodes need the same Python packages (torch above all), as docs/compute.md says.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from diffquant.compute.reporting import GridError, Reporter, WorkerDied
from diffquant.compute.units import Outcome, StopUnit, Unit, Work
from diffquant.config import TrainConfig
from diffquant.errors import ConfigError
from diffquant.float_mode import denormals_flushed
from diffquant.io import atomic_path
from diffquant.train.resume import LIBRARY, code_hash

log = logging.getLogger(__name__)

MAX_RETRIES = 3  # attempts after the first when a unit's process or node dies
POLL_S = 0.5  # how often the driver collects what the units reported

Files = dict[str, bytes]  # a unit folder's files by name


def connect(address: str) -> None:
    """Start a Ray runtime here (``local``) or join the cluster at ``address``; nothing when this process already
    runs one (a test's, or an earlier grid's: starting Ray takes seconds)."""
    if ray.is_initialized():
        return
    try:
        if address == "local":
            ray.init(address="local", include_dashboard=False)
        else:
            ray.init(address=address, runtime_env={"py_modules": [str(LIBRARY)]})
    except ConnectionError as exc:
        raise GridError(
            f"train.grid_address {address!r}: no Ray cluster answers there ({str(exc).splitlines()[0]}); start one "
            "(ray start --head, docs/compute.md) or set train.grid_address to local"
        ) from None


def read_folder(folder: Path) -> Files:
    """The files directly in ``folder`` (none when it does not exist)."""
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*")) if p.is_file()} if folder.is_dir() else {}


def write_files(folder: Path, files: Files) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        with atomic_path(folder / name) as tmp:
            tmp.write_bytes(data)


def _changed(folder: Path, sent: dict[str, str]) -> Files:
    """The files of ``folder`` whose bytes differ from what was last sent (``sent``: name -> sha256, updated)."""
    out = {}
    for name, data in read_folder(folder).items():
        digest = hashlib.sha256(data).hexdigest()
        if sent.get(name) != digest:
            out[name], sent[name] = data, digest
    return out


def relocate(obj: Any, src: Path, dst: Path) -> Any:
    """``obj`` with every path under ``src`` moved under ``dst`` (an outcome's checkpoint and file paths, from the
    worker's temp folder to the unit's folder)."""
    if isinstance(obj, Path):
        return dst / obj.relative_to(src) if obj.is_relative_to(src) else obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: relocate(getattr(obj, f.name), src, dst) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, dict):
        return {k: relocate(v, src, dst) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(relocate(v, src, dst) for v in obj)
    return obj


@ray.remote(num_cpus=0)
class Hub:
    """The driver-side record of a grid: which attempt of each unit is current, each running unit's latest files
    (what a retried attempt resumes from), and the events the driver has not collected yet."""

    def __init__(self, folders: dict[str, str]) -> None:
        self.folders = folders  # unit name -> its output folder (read for a unit's first attempt: this node's disk)
        self.attempt: dict[str, int] = {}
        self.files: dict[str, Files] = {}
        self.events: list[tuple[str, str, Any]] = []
        self.closed = False
        self.stopping: set[str] = set()

    def claim(self, name: str, where: str) -> tuple[int, Files] | None:
        """A new attempt of unit ``name``: its number and the files to resume from; None once the grid is closed."""
        if self.closed:
            return None
        self.attempt[name] = self.attempt.get(name, 0) + 1
        if name not in self.files:
            self.files[name] = read_folder(Path(self.folders[name]))
        self.events.append(("started", name, {"attempt": self.attempt[name], "where": where}))
        return self.attempt[name], self.files[name]

    def report(self, name: str, attempt: int, record: dict[str, Any], files: Files) -> str:
        """A finished epoch and the files it changed; what the attempt does next: ``go`` on, ``stop`` (a hook asked
        for it) or step aside (``superseded``: a newer attempt of the unit runs)."""
        if attempt != self.attempt.get(name):
            return "superseded"
        self.files[name] = {**self.files[name], **files}
        self.events.append(("epoch", name, (record, files)))
        return "stop" if name in self.stopping else "go"

    def stop(self, name: str) -> None:
        self.stopping.add(name)

    def close(self) -> None:
        """A unit raised: no unit starts after this."""
        self.closed = True

    def forget(self, name: str) -> None:
        self.files.pop(name, None)

    def drain(self) -> list[tuple[str, str, Any]]:
        events, self.events = self.events, []
        return events


@ray.remote
def train_unit(works: Sequence[Work], index: int, hub: Any, code: str) -> tuple[Outcome, Files] | None:
    """One attempt of unit ``works[index]`` in a temp folder of this worker; its outcome (paths moved to the unit's
    folder) and its last changed files, or None when the grid closed before it could start or a hook stopped it."""
    work = copy.deepcopy(works[index])  # the object store's arrays are read-only; training gets its own copy
    name = work.unit.name
    where = f"{socket.gethostname()}:{os.getpid()}"
    if code_hash() != code:  # before claiming anything: the unit stays the driver's to place
        raise GridError(
            f"unit {name}: {where} runs other diffquant code than the driver (code hash {code_hash()}, the "
            f"driver's {code}); run the same commit and packages on every node"
        )
    claim = ray.get(hub.claim.remote(name, where))
    if claim is None:
        return None
    attempt, files = claim
    torch.set_num_threads(work.cfg.train.threads)
    with tempfile.TemporaryDirectory(prefix="diffquant-unit-") as tmp:
        folder = Path(tmp)
        write_files(folder, files)
        sent: dict[str, str] = {}
        _changed(folder, sent)

        def on_epoch(record: dict[str, Any]) -> None:
            answer = ray.get(hub.report.remote(name, attempt, record, _changed(folder, sent)))
            if answer != "go":  # a hook stopped the unit, or a newer attempt took it over (Ray ignores this one)
                raise StopUnit(f"{name}: {answer}")

        try:
            with denormals_flushed():
                outcome = dataclasses.replace(work, folder=folder).run(on_epoch, False)
        except StopUnit:
            return None
        except BaseException as exc:
            ray.get(hub.close.remote())  # at once: the units not yet started never start
            exc.add_note(f"raised while training unit {name} on {where}")
            raise
        return relocate(outcome, folder, Path(work.folder)), _changed(folder, sent)


def unit_gpus(cfg: TrainConfig) -> float:
    """The GPU share each unit asks for: ``train.gpus_per_unit`` when the units train on a GPU (``cuda``, or
    ``auto`` on a cluster that has one: then every unit does, so none trains on a CPU by chance), else 0."""
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.device == "cpu" or (cfg.device == "auto" and not gpus):
        return 0.0
    if not gpus:
        raise ConfigError(
            "train.device is 'cuda' but the Ray cluster has no GPU; start the nodes with GPUs (ray start "
            "--num-gpus N) or set train.device to auto or cpu"
        )
    return cfg.gpus_per_unit


def check_threads(works: Sequence[Work]) -> None:
    """A unit needs a node with its thread count of CPUs: Ray would wait for one forever."""
    largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=0)
    wide = max(w.cfg.train.threads for w in works)
    if wide > largest:
        raise ConfigError(
            f"train.threads is {wide} but the largest node of the Ray cluster has {largest:g} CPUs; lower "
            "train.threads or add a larger node"
        )


def run_on_ray(works: Sequence[Work], reporter: Reporter, cfg: TrainConfig) -> None:
    """Train ``works`` as Ray tasks, reporting to ``reporter`` as the units go."""
    connect(cfg.grid_address)
    check_threads(works)
    gpus = unit_gpus(cfg)
    by_name = {w.unit.name: w for w in works}
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    hub = Hub.options(scheduling_strategy=here).remote({w.unit.name: str(Path(w.folder).resolve()) for w in works})
    shared, code = ray.put(list(works)), code_hash()
    pending = {
        train_unit.options(
            name=w.unit.name,
            num_cpus=w.cfg.train.threads,
            num_gpus=gpus,
            max_retries=MAX_RETRIES,
            retry_exceptions=False,
        ).remote(shared, i, hub, code): w
        for i, w in enumerate(works)
    }
    cpus = ray.cluster_resources().get("CPU", 0)
    log.info("training %d units on Ray (%g CPUs in the cluster), %g GPU per unit", len(works), cpus, gpus)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
            _collect(hub, by_name, reporter)  # every epoch of a unit before its end
            for ref in ready:
                _end(ref, pending.pop(ref), hub, reporter)
    except BaseException as exc:  # interrupted here, or a hook raised: stop every unit, report what was running
        for ref in pending:
            ray.cancel(ref, force=True)
        reporter.interrupted(exc)
        raise
    finally:
        ray.kill(hub)


def _collect(hub: Any, by_name: dict[str, Work], reporter: Reporter) -> None:
    """Hand what the units reported to their hooks; write each new epoch's files into the unit's folder first."""
    for kind, name, payload in ray.get(hub.drain.remote()):
        work = by_name[name]
        if kind == "started":
            if payload["attempt"] > 1:
                log.warning("%s: attempt %d on %s, resuming", name, payload["attempt"], payload["where"])
            reporter.started(work.unit, work.finished_epochs())
        else:
            record, files = payload
            if work.unit not in reporter.stopped and int(record["epoch"]) > reporter.last_epoch[work.unit]:
                write_files(Path(work.folder), files)
            try:
                reporter.epoch(work.unit, record)
            except StopUnit:
                hub.stop.remote(name)


def _end(ref: Any, work: Work, hub: Any, reporter: Reporter) -> None:
    unit: Unit = work.unit
    try:
        result = ray.get(ref)
    except ray.exceptions.RayTaskError as err:  # the unit raised (or refused its node): not retried
        hub.close.remote()
        reporter.failed(unit, err.cause if err.cause is not None else err)
        return
    except ray.exceptions.RayError as err:  # its process or node died, MAX_RETRIES + 1 times
        first = f"{type(err).__name__}: {str(err).splitlines()[0]}"
        reporter.failed(unit, WorkerDied(f"unit {unit.name}: lost after {MAX_RETRIES + 1} attempts ({first})"))
        return
    finally:
        hub.forget.remote(unit.name)
    if result is None:  # stopped by a hook, or never started
        reporter.handle(("stopped", unit, None))
        return
    outcome, files = result
    if unit not in reporter.stopped:
        write_files(Path(work.folder), files)
    reporter.finished(unit, outcome)
