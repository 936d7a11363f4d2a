"""What every engine shares: how a unit is trained where it lands, and how its events reach its hooks in the driver.

A unit reports ``started`` (with the epochs an interrupted run already finished), each ``epoch``, then ``finished``
(its outcome), ``failed`` (its exception) or ``stopped`` (a hook asked it to stop, :class:`StopUnit`). Engines carry
those events to the driver, whose :class:`Reporter` hands them to the unit's hooks: in order, once each, and
remembering how the grid must end. A stop request is the engine's to deliver: in-process it is raised through the
unit's own epoch callback; a remote unit learns of it when it reports its next epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from diffquant.compute.units import Outcome, SeedHooks, StopUnit, Unit, Work
from diffquant.errors import DiffQuantError
from diffquant.float_mode import denormals_flushed

log = logging.getLogger(__name__)

HooksOf = Callable[[Unit], SeedHooks]
Event = tuple[str, Unit, Any]  # ("started" | "epoch" | "finished" | "failed", unit, payload)
Emit = Callable[[Event], None]


class GridError(DiffQuantError):
    """A unit can not run where it was sent, or the grid lost units to dead workers."""


class WorkerDied(GridError):
    """The process (or machine) training a unit died: killed, out of memory, lost. It fails that unit alone."""


def execute(work: Work, emit: Emit, progress: bool) -> None:
    """Train one unit with its thread count, reporting its start, epochs and end through ``emit``; re-raises what
    training raised, with a note naming the unit."""
    unit = work.unit
    emit(("started", unit, work.finished_epochs()))
    threads = torch.get_num_threads()
    torch.set_num_threads(work.cfg.train.threads)
    try:
        with denormals_flushed():  # as the stages do: every unit trains alike, wherever it runs
            outcome = work.run(lambda record: emit(("epoch", unit, record)), progress)
    except StopUnit:
        emit(("stopped", unit, None))
        return
    except BaseException as exc:
        exc.add_note(f"raised while training unit {unit.name}")
        emit(("failed", unit, exc))
        raise
    finally:
        torch.set_num_threads(threads)
    emit(("finished", unit, outcome))


class Reporter:
    """The driver's side of a grid: each unit's events reach its hooks in order and once (a retried attempt's
    ``started`` and any epoch already handed on are dropped), its outcome is kept, and its failure remembered."""

    def __init__(self, hooks_of: HooksOf, total: int) -> None:
        self.hooks_of, self.total = hooks_of, total
        self.outcomes: dict[Unit, Outcome] = {}
        self.last_epoch: dict[Unit, int] = {}  # a unit is in here once started
        self.errors: list[tuple[Unit, BaseException]] = []  # raised by a unit: the grid starts no more units
        self.lost: list[tuple[Unit, WorkerDied]] = []  # whose worker died: that unit alone fails
        self.stopped: set[Unit] = set()  # a hook asked them to stop: what they report after that is dropped
        self.ended: set[Unit] = set()

    @property
    def stopping(self) -> bool:
        """A unit raised: start no more units."""
        return bool(self.errors)

    @property
    def running(self) -> list[Unit]:
        return [u for u in self.last_epoch if u not in self.ended]

    def handle(self, event: Event) -> None:
        kind, unit, payload = event
        if kind == "started":
            self.started(unit, payload)
        elif kind == "epoch":
            self.epoch(unit, payload)
        elif kind == "finished":
            self.finished(unit, payload)
        elif kind == "stopped":
            self.ended.add(unit)
        else:
            self.failed(unit, payload)

    def started(self, unit: Unit, finished: list[dict[str, Any]]) -> None:
        if unit in self.last_epoch:
            return
        self.last_epoch[unit] = max((int(r["epoch"]) for r in finished), default=0)
        self.hooks_of(unit).started(unit.seed, finished)

    def epoch(self, unit: Unit, record: dict[str, Any]) -> bool:
        """Hand the record on unless that epoch already was (a retried attempt repeating it) or the unit was asked
        to stop; whether it was new. Re-raises the hook's :class:`StopUnit` for the engine to deliver."""
        if unit in self.stopped:
            return False
        if int(record["epoch"]) <= self.last_epoch[unit]:
            log.info("%s: epoch %s was already reported; dropped", unit.name, record["epoch"])
            return False
        self.last_epoch[unit] = int(record["epoch"])
        try:
            self.hooks_of(unit).epoch(unit.seed, record)
        except StopUnit:
            self.stopped.add(unit)
            raise
        return True

    def finished(self, unit: Unit, outcome: Outcome) -> None:
        if unit in self.stopped:  # it ended before the request reached it: stopped all the same
            self.ended.add(unit)
            return
        self.outcomes[unit] = outcome
        self.ended.add(unit)
        self.hooks_of(unit).finished(unit.seed, outcome)
        log.info("%s finished (%d of %d units)", unit.name, len(self.outcomes), self.total)

    def failed(self, unit: Unit, exc: BaseException) -> None:
        self.ended.add(unit)
        if isinstance(exc, WorkerDied):
            self.lost.append((unit, exc))
        else:
            self.errors.append((unit, exc))
        log.error("%s failed: %s", unit.name, f"{type(exc).__name__}: {exc}".splitlines()[0])
        self.hooks_of(unit).failed(unit.seed, exc)

    def interrupted(self, exc: BaseException) -> None:
        """The driver itself stopped (interrupted, or a hook raised): every running unit's hooks hear of it."""
        for unit in self.running:
            self.ended.add(unit)
            self.hooks_of(unit).failed(unit.seed, exc)

    def close(self) -> dict[Unit, Outcome]:
        """The outcomes; else the first unit's exception, or a ``GridError`` naming every unit whose worker died."""
        if self.errors:
            raise self.errors[0][1]
        if self.lost:
            names = ", ".join(sorted(u.name for u, _ in self.lost))
            raise GridError(
                f"training worker(s) died (killed, out of memory, machine lost) under: {names}; "
                f"{len(self.outcomes)} other unit(s) finished. Run the command again: those units resume from "
                f"their last finished epoch. First cause: {self.lost[0][1]}"
            )
        return self.outcomes
