"""The grid runner: every unit of training work, in this process or on ``train.workers`` processes.

One worker trains the units one after another in this process. Several are spawned processes, each with
``train.threads`` CPU threads (0: its share of the cores) and, when training on CUDA, a GPU of its own
(round-robin when there are more workers than GPUs). A unit seeds itself, so its weights do not depend on the
worker that trains it: with the same threads per unit, a 2-worker grid gives the 1-worker grid's models exactly
(tests/train/test_grid.py). The thread count itself is not neutral: torch's CPU kernels split sums by thread, so
1 and 2 threads differ in the last bits of a float, and those differences grow over epochs.

Workers send what their unit reports (started, every epoch, finished or failed) back over a queue and this process
hands it to the unit's :class:`~diffquant.compute.units.SeedHooks`, so MLflow is only ever written from here. A failed
unit cancels the units not yet started, lets the running ones finish (their checkpoints are kept), then raises.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import torch

from diffquant.compute.units import Outcome, SeedHooks, Unit, Work
from diffquant.config import TrainConfig
from diffquant.errors import DiffQuantError
from diffquant.float_mode import denormals_flushed
from diffquant.train.trainer import resolve_device

log = logging.getLogger(__name__)

HooksOf = Callable[[Unit], SeedHooks]
Event = tuple[str, Unit, Any]  # ("started" | "epoch" | "finished" | "failed", unit, payload)
Emit = Callable[[Event], None]

_events: Any = None  # a worker process's queue back to the parent (set by _start_worker)


class GridError(DiffQuantError):
    """A worker process died (killed, out of memory) while it trained a unit."""


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(cfg: TrainConfig, workers: int) -> int:
    """``train.threads`` (the threads of one training process), or 0: the cores shared among the workers."""
    return cfg.threads or max(1, available_cores() // workers)


def execute(work: Work, emit: Emit, progress: bool) -> None:
    """Train one unit, reporting its start, epochs and end through ``emit``; re-raises what training raised."""
    unit = work.unit
    emit(("started", unit, work.finished_epochs()))
    try:
        with denormals_flushed():  # as the stages do: every unit trains alike, wherever it runs
            outcome = work.run(lambda record: emit(("epoch", unit, record)), progress)
    except BaseException as exc:
        emit(("failed", unit, exc))
        raise
    emit(("finished", unit, outcome))


def dispatch(event: Event, hooks_of: HooksOf, outcomes: dict[Unit, Outcome]) -> None:
    """Hand one event to the hooks of its unit's group."""
    kind, unit, payload = event
    hooks = hooks_of(unit)
    if kind == "started":
        hooks.started(unit.seed, payload)
    elif kind == "epoch":
        hooks.epoch(unit.seed, payload)
    elif kind == "finished":
        outcomes[unit] = payload
        hooks.finished(unit.seed, payload)
    else:
        hooks.failed(unit.seed, payload)


def run_grid(
    works: Sequence[Work], hooks_of: HooksOf, cfg: TrainConfig, workers: int = 0, progress: bool = True
) -> dict[Unit, Outcome]:
    """Train every unit of ``works`` on ``workers`` processes (0: ``train.workers``); their outcomes by unit.

    Units are started in the order given; each resumes from its folder's ``last.pt`` when that matches. ``progress``
    draws an epoch bar when the units train in this process (workers draw none). With ``train.grid_storage`` the
    units go to the workers of many machines instead (:mod:`diffquant.train.cluster`).
    """
    workers = min(workers or cfg.workers, len(works))
    if len({w.unit for w in works}) != len(works):
        raise ValueError("run_grid: two works of the same unit would train into one folder")
    if cfg.grid_storage and works:
        from diffquant.train.cluster import Cluster, run_on_cluster  # optuna: only for a grid on many machines

        return run_on_cluster(Cluster(cfg.grid_storage, Path(cfg.grid_jobs)), works, hooks_of)
    if workers <= 1:
        return _in_process(works, hooks_of, cfg, progress)
    return _on_workers(works, hooks_of, cfg, workers)


def _in_process(works: Sequence[Work], hooks_of: HooksOf, cfg: TrainConfig, progress: bool) -> dict[Unit, Outcome]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    outcomes: dict[Unit, Outcome] = {}
    for work in works:
        execute(work, lambda event: dispatch(event, hooks_of, outcomes), progress)
    return outcomes


def _start_worker(threads: int, events: Any, gpus: Any) -> None:
    """Worker initialiser: the queue to the parent, its thread share and (on CUDA) the one GPU it may see."""
    global _events
    _events = events
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())  # before CUDA is first touched in this process
    torch.set_num_threads(threads)


def _send(event: Event) -> None:
    kind, unit, payload = event
    if kind == "failed":
        try:
            pickle.dumps(payload)
        except Exception:  # an exception that does not pickle still reaches the parent, as its text
            payload = RuntimeError(f"{type(payload).__name__}: {payload}")
    _events.put((kind, unit, payload))


def _work_in_worker(work: Work) -> None:
    execute(work, _send, progress=False)


def _on_workers(works: Sequence[Work], hooks_of: HooksOf, cfg: TrainConfig, workers: int) -> dict[Unit, Outcome]:
    ctx = mp.get_context("spawn")  # fork would copy this process's torch threads and MLflow clients
    events, gpus = ctx.Queue(), None
    if resolve_device(cfg.device).type == "cuda":
        gpus = ctx.Queue()
        for i in range(workers):
            gpus.put(i % torch.cuda.device_count())
    threads = threads_per_worker(cfg, workers)
    log.info("training %d units on %d worker processes, %d thread(s) each", len(works), workers, threads)
    outcomes: dict[Unit, Outcome] = {}
    running: set[Unit] = set()
    ended = 0  # units whose last event (finished or failed) has arrived
    failure: BaseException | None = None
    with ProcessPoolExecutor(workers, ctx, _start_worker, (threads, events, gpus)) as pool:
        futures = [pool.submit(_work_in_worker, w) for w in works]
        try:
            while True:
                try:
                    event = events.get(timeout=0.5)
                except queue.Empty:
                    if _all_reported(futures, running, ended):
                        break
                    continue
                kind, unit, payload = event
                if kind == "started":
                    running.add(unit)
                elif kind in ("finished", "failed"):
                    running.discard(unit)
                    ended += 1
                    log.info("%s %s (%d of %d units)", unit.name, kind, ended, len(works))
                dispatch(event, hooks_of, outcomes)
                if kind == "failed" and failure is None:
                    failure = payload
                    for f in futures:
                        f.cancel()
        except BaseException as exc:  # interrupted here: stop scheduling, report what was running
            for f in futures:
                f.cancel()
            for unit in running:
                hooks_of(unit).failed(unit.seed, exc)
            raise
    if failure is not None:
        raise failure
    return outcomes


def _all_reported(futures: list[Future], running: set[Unit], ended: int) -> bool:
    """Whether every unit that ran has sent its last event (``ended`` of them arrived); ``GridError`` when a worker
    died under a unit."""
    if not all(f.done() for f in futures):
        return False
    for f in futures:
        if not f.cancelled() and isinstance(f.exception(), BrokenProcessPool):
            names = ", ".join(sorted(u.name for u in running)) or "none"
            raise GridError(
                f"a training worker process died (killed, or out of memory) while training: {names}. Run the "
                "command again: those units resume from their last finished epoch"
            ) from f.exception()
    return ended == sum(not f.cancelled() for f in futures)
