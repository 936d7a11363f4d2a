"""What the grid tests run: tiny policy units on a synthetic market, scripted units that sleep, raise or die, a
policy unit killed after an epoch, and hooks that record every call. A module (not a test file) so that worker
processes and Ray workers import it by name; importable without mlflow, dvc, optuna or ray."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from diffquant.compute.units import StopUnit, Unit
from diffquant.config import Config, from_dict
from diffquant.data.splits import Samples, Series
from diffquant.train.policy_training import PolicyWork, TrainingData, policy_works
from tests.repo_copy import REPO

TF_MS = 3_600_000


def tiny_config(seeds: list[int], epochs: int = 1) -> Config:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["itransformer"].update(d_model=8, n_heads=1, n_layers=1, d_ff=16)
    raw["model"]["head"]["dense"] = [8]
    raw["window"].update(context=16, horizon=4, stride=4)
    raw["baselines"]["momentum_lookbacks"] = [4, 8]
    raw["train"].update(epochs=epochs, batch_size=8, seeds=seeds, device="cpu", threads=1, mirror=False, val_freq=1)
    return from_dict(raw)


def synthetic_data(samples: int = 64, bars: int = 300) -> tuple[TrainingData, Series]:
    """Random-walk train samples (windows of 20 bars) and a val series of ``bars`` bars."""
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]

    def walk(shape: Any) -> np.ndarray:
        return 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, shape), axis=-1))

    close = walk((samples, 20))
    features = rng.normal(size=(samples, 20, 3)).astype(np.float32)
    train = Samples(features, close, np.zeros_like(close), np.arange(samples), names)
    series = Series(
        rng.normal(size=(bars, 3)).astype(np.float32),
        walk(bars),
        np.zeros(bars),
        np.arange(bars) * TF_MS,
        17,
        TF_MS,
        names,
    )
    return TrainingData(train, (series,), "synthetic"), series


def tiny_works(out: Path, seeds: list[int], epochs: int = 1, samples: int = 64) -> list[PolicyWork]:
    data, _ = synthetic_data(samples)
    return policy_works(tiny_config(seeds, epochs), data, out)


class Recorder:
    """SeedHooks of one group that keep every call, in order."""

    def __init__(self, log: list[tuple[str, str, Any]], group: str) -> None:
        self.log, self.group = log, group

    def begin(self, resuming: bool) -> None:
        self.log.append(("begin", self.group, resuming))

    def started(self, seed: int, finished: list) -> None:
        self.log.append(("started", f"{self.group}/{seed}", len(finished)))

    def epoch(self, seed: int, record: dict) -> None:
        self.log.append(("epoch", f"{self.group}/{seed}", record["epoch"]))

    def finished(self, seed: int, outcome: Any) -> None:
        self.log.append(("finished", f"{self.group}/{seed}", outcome.seed))

    def failed(self, seed: int, exc: BaseException) -> None:
        self.log.append(("failed", f"{self.group}/{seed}", type(exc).__name__))


class Stopper(Recorder):
    """Records every call, and asks unit ``seed`` to stop when it reports epoch ``at`` (as a pruner would)."""

    def __init__(self, log: list[tuple[str, str, Any]], group: str, seed: int, at: int) -> None:
        super().__init__(log, group)
        self.stop_seed, self.at = seed, at

    def epoch(self, seed: int, record: dict) -> None:
        super().epoch(seed, record)
        if seed == self.stop_seed and record["epoch"] == self.at:
            raise StopUnit(f"seed {seed}: stop at epoch {self.at}")


class Tee:
    """SeedHooks that pass every call to each of ``hooks`` (MLflow's and a recorder, say)."""

    def __init__(self, *hooks: Any) -> None:
        self.hooks = hooks

    def __getattr__(self, name: str) -> Any:
        return lambda *args: [getattr(h, name)(*args) for h in self.hooks] and None


@dataclasses.dataclass(frozen=True)
class Done:
    seed: int
    seconds: float = 0.0
    result: Any = None
    pid: int = 0
    threads: int = 0
    gpu: str = ""

    def summary(self) -> dict[str, Any]:
        return {}

    def run_metrics(self) -> dict[str, Any]:
        return {}


@dataclasses.dataclass(frozen=True)
class Scripted:
    """A unit that sleeps, then finishes, raises or SIGKILLs its own process, as told; each attempt leaves a line
    in ``<trace>/<seed>`` when ``trace`` is a folder."""

    unit: Unit
    cfg: Config
    seconds: float = 0.0
    ending: str = "finish"  # finish | raise | die
    meet: str = ""  # a folder: wait there until two processes have arrived (proves they run side by side)
    trace: str = ""
    folder: Path = Path("unused")

    def finished_epochs(self) -> list[dict[str, Any]]:
        return []

    def run(self, on_epoch: Any, progress: bool) -> Done:
        if self.trace:
            with open(Path(self.trace) / str(self.unit.seed), "a") as f:
                f.write(f"{os.getpid()}\n")
        if self.meet:
            (Path(self.meet) / str(os.getpid())).touch()
            deadline = time.monotonic() + 120
            while len(list(Path(self.meet).iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep(self.seconds)
        if self.ending == "raise":
            raise ValueError(f"{self.unit.name} is broken")
        if self.ending == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        on_epoch({"epoch": 1})
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpu = f"{visible}:{torch.cuda.device_count()}" if torch.cuda.is_available() else ""
        return Done(self.unit.seed, pid=os.getpid(), threads=torch.get_num_threads(), gpu=gpu)


def scripted(seeds: range | list[int], threads: int = 1, device: str = "cpu", **kw: Any) -> list[Scripted]:
    cfg = tiny_config([1])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads, device=device))
    return [Scripted(Unit("policy", s), cfg, **kw) for s in seeds]


@dataclasses.dataclass(frozen=True)
class Gated(PolicyWork):
    """A policy unit whose first attempt (no file at ``gate`` yet) stops after reporting epoch ``at``: it writes its
    pid (or, with ``hold``, its Ray node) to ``gate`` and SIGKILLs its own process (or waits to be killed with its
    node). Later attempts train on as the plain unit would."""

    gate: str = ""
    at: int = 1
    hold: bool = False

    @classmethod
    def of(cls, work: PolicyWork, gate: Path, **kw: Any) -> Gated:
        return cls(**{f.name: getattr(work, f.name) for f in dataclasses.fields(PolicyWork)}, gate=str(gate), **kw)

    def run(self, on_epoch: Any, progress: bool) -> Any:
        def gated(record: dict[str, Any]) -> None:
            on_epoch(record)
            if record["epoch"] == self.at and not Path(self.gate).exists():
                if self.hold:
                    import ray

                    Path(self.gate).write_text(ray.get_runtime_context().get_node_id())
                    time.sleep(600)
                Path(self.gate).write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)

        return super().run(gated, progress)
