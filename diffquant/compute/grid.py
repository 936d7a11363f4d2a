"""The grid runner: every unit of training work, in this process, on local worker processes or on Ray.

:func:`run_grid` picks the engine:

- in-process (``train.workers: 1``, no ``train.grid_address``): one unit after another in this process;
- the local pool (``train.workers: N``; :mod:`diffquant.compute.local_pool`): N spawned processes here, no Ray;
- Ray (``train.grid_address``: ``local``, ``auto`` or ``host:port``; :mod:`diffquant.compute.ray_engine`): every unit
  a Ray task, on this machine or a cluster.

Whatever the engine, what a unit reports (started, every epoch, finished or failed) reaches this process's
:class:`Reporter`, which hands it to the unit's :class:`~diffquant.compute.units.SeedHooks`: MLflow is only ever
written from here. A unit that raises stops the grid from starting more units; the running ones finish (their
checkpoints are kept), then its exception is raised, naming the unit. A unit whose worker process died fails alone
(on Ray after its retries, each resuming from the last finished epoch).

A unit seeds itself and trains with its own thread count (``cfg.train.threads``), so its weights do not depend on
the engine or the worker: a grid gives the one-worker models exactly (tests/compute). The thread count itself is not
neutral: torch's CPU kernels split sums by thread, so 1 and 2 threads differ in the last bits of a float, and those
differences grow over epochs. It is therefore part of a unit's identity (resume spec, fold key), resolved once by
the driver (:func:`with_unit_threads`), never from the cores of whichever machine runs the unit.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import torch

from diffquant.compute.local_pool import run_on_pool
from diffquant.compute.reporting import HooksOf, Reporter, execute
from diffquant.compute.units import Outcome, Unit, Work
from diffquant.config import Config, TrainConfig


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def unit_threads(train: TrainConfig) -> int:
    """``train.threads``, or for 0 the driver's choice: torch's default here with one worker (what a stage without
    a grid used), this machine's cores shared among ``train.workers`` otherwise."""
    if train.threads:
        return train.threads
    return torch.get_num_threads() if train.workers <= 1 else max(1, available_cores() // train.workers)


def with_unit_threads(cfg: Config) -> Config:
    """``cfg`` with ``train.threads`` resolved (:func:`unit_threads`): call it once, in the driver, before building
    the works, so the count is in every unit's identity wherever the unit then runs."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=unit_threads(cfg.train)))


def run_grid(
    works: Sequence[Work], hooks_of: HooksOf, cfg: TrainConfig, workers: int = 0, progress: bool = True
) -> dict[Unit, Outcome]:
    """Train every unit of ``works`` (see the module docstring for where); their outcomes by unit.

    Units start in the order given; each resumes from its folder's ``last.pt`` when that matches. ``workers``
    overrides ``train.workers`` (0: keep it). ``progress`` draws an epoch bar when the units train in this process.
    """
    if len({w.unit for w in works}) != len(works):
        raise ValueError("run_grid: two works of the same unit would train into one folder")
    unresolved = [w.unit.name for w in works if w.cfg.train.threads < 1]
    if unresolved:
        raise ValueError(
            f"run_grid: train.threads is 0 for {unresolved[0]}: resolve it in the driver before building the works "
            "(diffquant.compute.grid.with_unit_threads), so the count is part of the unit's identity"
        )
    reporter = Reporter(hooks_of, len(works))
    if not works:
        return {}
    if cfg.grid_address:
        from diffquant.compute.ray_engine import run_on_ray  # ray: only for a grid on Ray

        run_on_ray(works, reporter, cfg)
    elif min(workers or cfg.workers, len(works)) <= 1:
        for work in works:
            execute(work, reporter.handle, progress)
    else:
        run_on_pool(works, reporter, cfg, min(workers or cfg.workers, len(works)))
    return reporter.close()
