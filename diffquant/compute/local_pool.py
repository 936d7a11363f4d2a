"""The local pool: N spawned worker processes on this machine, no Ray (it costs nothing to start on a laptop).

The parent hands each idle worker one unit at a time, so it always knows which unit a worker holds: a worker killed
by the OS (out of memory, SIGKILL) fails that unit alone, named in a :class:`~diffquant.compute.reporting.WorkerDied`,
a fresh process takes its place, and the other units go on. (``concurrent.futures.ProcessPoolExecutor``, used
before, marks the whole pool broken when one worker dies, and every running unit was lost with it.) Workers send
what their unit reports back over one queue; on CUDA each worker sees one GPU (round-robin when there are more
workers than GPUs).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import pickle
import queue
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from diffquant.compute.reporting import Event, Reporter, WorkerDied, execute
from diffquant.compute.units import StopUnit, Unit, Work
from diffquant.config import TrainConfig

log = logging.getLogger(__name__)

POLL_S = 0.5  # the longest the parent waits for an event before it looks for dead workers


def _serve(inbox: Any, events: Any, stop: Any, gpu: int | None) -> None:
    """A worker: train the units the parent sends until it sends None; ``stop`` set: end the unit at its next
    epoch (a hook asked for it)."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before CUDA is first touched in this process

    def send(event: Event) -> None:
        kind, unit, payload = event
        if kind == "failed":
            try:
                pickle.dumps(payload)
            except Exception:  # an exception that does not pickle still reaches the parent, as its text
                payload = RuntimeError(f"{type(payload).__name__}: {payload}")
        events.put((kind, unit, payload))
        if kind == "epoch" and stop.is_set():
            raise StopUnit(unit.name)

    while (work := inbox.get()) is not None:
        with contextlib.suppress(Exception):  # reported to the parent as "failed"; the worker takes the next unit
            execute(work, send, progress=False)


@dataclass
class _Worker:
    process: Any  # multiprocessing.Process
    inbox: Any  # its own queue of works
    stop: Any  # multiprocessing.Event: end the current unit at its next epoch
    gpu: int | None
    unit: Unit | None = None  # the unit it trains now


class _Pool:
    def __init__(self, size: int, cuda: bool) -> None:
        self.ctx = mp.get_context("spawn")  # fork would copy this process's torch threads and MLflow clients
        self.events = self.ctx.Queue()
        self.size, self.started = size, 0
        self.gpus = torch.cuda.device_count() if cuda else 0
        self.workers: list[_Worker] = []

    def fill(self) -> None:
        """Start workers up to the pool's size (at first, and in place of dead ones)."""
        while len(self.workers) < self.size:
            gpu = self.started % self.gpus if self.gpus else None
            inbox, stop = self.ctx.Queue(), self.ctx.Event()
            process = self.ctx.Process(target=_serve, args=(inbox, self.events, stop, gpu), daemon=True)
            process.start()
            self.workers.append(_Worker(process, inbox, stop, gpu))
            self.started += 1

    def assign(self, worker: _Worker, work: Work) -> None:
        worker.unit = work.unit
        worker.stop.clear()
        worker.inbox.put(work)

    def close(self, force: bool) -> None:
        for w in self.workers:
            if force:
                w.process.kill()
            elif w.process.is_alive():
                w.inbox.put(None)
        for w in self.workers:
            w.process.join(timeout=30)
            if w.process.is_alive():
                w.process.kill()


def run_on_pool(works: Sequence[Work], reporter: Reporter, cfg: TrainConfig, workers: int) -> None:
    """Train ``works`` on ``workers`` spawned processes, reporting to ``reporter``."""
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    log.info("training %d units on %d worker processes", len(works), workers)
    todo = deque(works)
    pool = _Pool(workers, cuda)
    try:
        while True:
            if todo and not reporter.stopping:
                pool.fill()
            for worker in pool.workers:
                if worker.unit is None and todo and not reporter.stopping:
                    pool.assign(worker, todo.popleft())
            if all(w.unit is None for w in pool.workers):
                break
            with contextlib.suppress(queue.Empty):
                _take(pool, reporter, pool.events.get(timeout=POLL_S))
            _bury(pool, reporter)
    except BaseException as exc:  # interrupted here, or a hook raised: stop every worker, report what was running
        pool.close(force=True)
        reporter.interrupted(exc)
        raise
    pool.close(force=False)


def _take(pool: _Pool, reporter: Reporter, event: Event) -> None:
    kind, unit, _ = event
    holder = next((w for w in pool.workers if w.unit == unit), None)
    try:
        reporter.handle(event)
    except StopUnit:
        if holder is not None:
            holder.stop.set()
    if kind in ("finished", "failed", "stopped") and holder is not None:
        holder.unit = None


def _bury(pool: _Pool, reporter: Reporter) -> None:
    """Fail the unit of each worker that died (after the events it sent before dying); the pool starts another."""
    dead = [w for w in pool.workers if not w.process.is_alive()]
    if not dead:
        return
    while True:  # what a worker sent just before it died is still in the queue
        try:
            _take(pool, reporter, pool.events.get(timeout=POLL_S))
        except queue.Empty:
            break
    for worker in dead:
        if worker.unit is not None:
            code = worker.process.exitcode
            how = (
                f"killed by signal {-code} (out of memory?)"
                if code is not None and code < 0
                else f"exit code {code}; its error is above"
            )
            reporter.failed(worker.unit, WorkerDied(f"the worker process training {worker.unit.name} died ({how})"))
        pool.workers.remove(worker)
