"""What every stage shares: where the repository is, its params, logging, atomic JSON, and the error contract.

A ``DiffQuantError`` (bad params, bad data) ends a stage with one ERROR line and exit code 2; any other exception is
a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from diffquant.config import Config, check_grid_address, load
from diffquant.errors import ConfigError, DiffQuantError
from diffquant.io import write_csv, write_json

__all__ = ["add_grid_address", "load_params", "parser", "repo_root", "run_stage", "write_csv", "write_json"]

log = logging.getLogger("diffquant.stages")


def repo_root() -> Path:
    """The workspace a stage reads and writes: the working directory when DVC runs the stage (``DVC_STAGE`` set; every
    stage runs at its workspace's root), else ``DVC_ROOT`` (set by hand, e.g. by tests), else the working directory.

    A queued or ``--temp`` experiment runs in a temp copy while DVC points ``DVC_ROOT`` at the parent repository: there
    ``DVC_ROOT`` would read the parent's params.yaml and write outputs into the parent's workspace. The MLflow store,
    shared by all experiments, stays under ``DVC_ROOT`` (``diffquant.tracking.tracking_uri``).
    """
    if os.environ.get("DVC_STAGE"):
        return Path.cwd().resolve()
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def parser(description: str | None, training: bool = False) -> argparse.ArgumentParser:
    """An argument parser with ``--params`` (and ``--workers``, ``--grid-address`` for a stage that trains); a stage
    adds its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (relative paths start at the repo root)")
    if training:
        p.add_argument(
            "--workers", type=int, default=0, help="training processes (default: train.workers); same models for any"
        )
        add_grid_address(p)
    return p


def add_grid_address(p: argparse.ArgumentParser) -> None:
    """``--grid-address``: where the training units run (``load_params`` applies it)."""
    p.add_argument(
        "--grid-address",
        default=None,
        help="where the units train (default: train.grid_address): '' worker processes here, local (Ray here), "
        "auto or host:port (a Ray cluster); same models for any",
    )


def load_params(path: str | Path = "params.yaml", workers: int = 0, grid_address: str | None = None) -> Config:
    """The params file's config; ``workers`` > 0 overrides ``train.workers`` and ``grid_address`` (not None)
    ``train.grid_address``: where units train never changes a trained model."""
    cfg = load(repo_root() / path)
    if workers < 0:
        raise ConfigError(f"--workers {workers}: give a positive number of training processes, or 0 for train.workers")
    train = cfg.train
    if workers:
        train = dataclasses.replace(train, workers=workers)
    if grid_address is not None:
        check_grid_address(grid_address, "--grid-address")
        train = dataclasses.replace(train, grid_address=grid_address)
    return dataclasses.replace(cfg, train=train)


def one_asset(cfg: Config) -> Config:
    """``cfg``, refused unless it names one asset and the single-asset model: what a command that trades one asset
    (the paper trader, the look-ahead check, the hyper-parameter search) needs; the chain runs any study."""
    if cfg.model.kind != "single":
        raise ConfigError("model.kind is 'portfolio': this command trades one asset's policy; set model.kind to single")
    if len(cfg.data.universe) != 1:
        raise ConfigError(
            f"data.symbols names {len(cfg.data.universe)} assets ({', '.join(cfg.data.universe)}): this command "
            "trades one; set data.symbols to [] (data.symbol) or to one asset"
        )
    return cfg


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main`` with logging set up; a ``DiffQuantError`` becomes one ERROR line and exit code 2."""
    setup_logging()
    torch.set_flush_denormal(True)  # the mode every model trains and decides in: diffquant.float_mode
    try:
        main()
    except DiffQuantError as exc:
        log.error("%s", exc)
        sys.exit(2)
