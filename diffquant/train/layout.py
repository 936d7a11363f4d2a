"""Where a training stage's files live: ``<out>/seed_<s>/{last,best,final}.pt`` plus each seed's history.

train, train-proxy, threshold-opt, evaluate and the look-ahead check all find a model through this module, so the
layout is spelled once.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

CheckpointName = Literal["last", "best", "final"]
CHECKPOINTS: tuple[CheckpointName, ...] = ("last", "best", "final")
HISTORY_JSON, VAL_HISTORY_CSV, HISTORY_PLOT = "history.json", "val_history.csv", "history.png"


def checkpoint_file(name: CheckpointName) -> str:
    """``best.pt``: the file name of a checkpoint inside a seed's folder."""
    return f"{name}.pt"


def seed_dir(out: Path, seed: int | str) -> Path:
    """The folder of one seed's model (``<out>/seed_<seed>``)."""
    return Path(out) / f"seed_{seed}"


def checkpoint_path(out: Path, seed: int | str, name: CheckpointName) -> Path:
    """``<out>/seed_<seed>/<name>.pt``."""
    return seed_dir(out, seed) / checkpoint_file(name)


def prune(out: Path, seeds: list[int]) -> None:
    """Remove what ``out`` (a persistent DVC output) holds beyond ``seeds``: the folders of seeds no longer configured
    and the files of the older one-seed layout (``<out>/last.pt`` ...). DVC's cache keeps earlier versions."""
    if not Path(out).is_dir():
        return
    keep = {seed_dir(out, s).name for s in seeds} | {HISTORY_PLOT}
    one_seed_files = {*(checkpoint_file(n) for n in CHECKPOINTS), HISTORY_JSON, VAL_HISTORY_CSV}
    for path in sorted(Path(out).iterdir()):
        stale_seed = path.is_dir() and path.name.startswith("seed_") and path.name not in keep
        if stale_seed or (path.is_file() and path.name in one_seed_files):
            log.info("removing %s: not an output of the seeds %s", path, seeds)
            shutil.rmtree(path) if path.is_dir() else path.unlink()
