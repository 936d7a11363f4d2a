"""One unit of training work: a policy or an MSE proxy, of one seed, in one model group.

A group is what a set of seeds trains on: one fold's pooled, per-asset or portfolio samples in a study
(``"<fold>/<group>"``, :mod:`diffquant.study.fold_models`). The grid runner (:mod:`diffquant.compute.grid`)
schedules units on processes, GPUs or machines and routes what they report to :class:`SeedHooks`; a unit knows
nothing of workers and the runner nothing of losses or models. A unit's work is picklable (it travels to a worker
process or another machine) and its result depends on the work alone (config with its thread count, data, seed),
never on which worker ran it or when.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from diffquant.config import Config

if TYPE_CHECKING:  # the runner never touches a result; the protocol only names its type
    from diffquant.train.trainer import TrainResult

Kind = Literal["policy", "proxy"]


@dataclass(frozen=True, order=True)
class Unit:
    kind: Kind
    seed: int
    group: str = ""  # "<fold>/<group>" in a study; "" for a lone set of seeds (a search trial)

    @property
    def name(self) -> str:
        """``q2024-01/pooled/policy/seed_42``: unique in a grid, safe as a folder or a log label."""
        return "/".join(p for p in (self.group, self.kind, f"seed_{self.seed}") if p)


class Outcome(Protocol):
    """A trained unit: the trainer's result and what the stage and MLflow keep of it."""

    seed: int
    result: TrainResult
    seconds: float

    def summary(self) -> dict[str, Any]:
        """What the stage's metrics file keeps (deterministic: no timings)."""
        ...

    def run_metrics(self) -> dict[str, Any]:
        """What the unit's MLflow run gets at the end."""
        ...


class Work(Protocol):
    """Everything one unit needs to train: config, data and the folder its checkpoints go to.

    A work is a frozen dataclass: an engine that trains it away from its folder (Ray) runs a copy with ``folder``
    replaced by a local one (``dataclasses.replace``) and brings the files back. ``cfg.train.threads`` is the
    unit's thread count (never 0 here: the driver resolves it, :func:`diffquant.compute.grid.with_unit_threads`).
    """

    unit: Unit
    cfg: Config
    folder: Path  # where its checkpoints go

    def finished_epochs(self) -> list[dict[str, Any]]:
        """The epoch records of an interrupted run this work would resume after (empty when it starts over)."""
        ...

    def run(self, on_epoch: Callable[[dict[str, Any]], None], progress: bool) -> Outcome:
        """Train (resuming from the folder's ``last.pt`` when it matches) and return the outcome."""
        ...


class StopUnit(Exception):
    """Raised by a hook's ``epoch`` to stop its unit early (a pruner does): the unit ends after at most one more
    epoch, without an outcome, and that is not a failure of the grid."""


class SeedHooks(Protocol):
    """How the units of one group report (``diffquant.tracking.StudyRuns`` logs them to MLflow)."""

    def begin(self, resuming: bool) -> None:
        """Once the params are accepted, before any seed; ``resuming``: an interrupted run is being continued."""

    def started(self, seed: int, finished: list[dict[str, Any]]) -> None:
        """Before training; ``finished`` are the epoch records an interrupted run already completed."""

    def epoch(self, seed: int, record: dict[str, Any]) -> None:
        """Every new finished epoch (in the driver, whatever engine trains the unit); raise :class:`StopUnit` to
        stop the unit."""

    def finished(self, seed: int, outcome: Outcome) -> None: ...

    def failed(self, seed: int, exc: BaseException) -> None:
        """Training raised (or was interrupted); the exception propagates after this."""


class QuietHooks:
    """Hooks that report nothing: for callers that want only the outcomes (a search trial, a benchmark, a test)."""

    def begin(self, resuming: bool) -> None: ...

    def started(self, seed: int, finished: list[dict[str, Any]]) -> None: ...

    def epoch(self, seed: int, record: dict[str, Any]) -> None: ...

    def finished(self, seed: int, outcome: Outcome) -> None: ...

    def failed(self, seed: int, exc: BaseException) -> None: ...
