"""Figures are written as complete PNG files, atomically, without importing matplotlib at ``import diffquant``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffquant.data.splits import Series
from diffquant.plots import plot_history

PNG = b"\x89PNG\r\n\x1a\n"


def _series(n: int = 300) -> Series:
    rng = np.random.default_rng(0)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_time = 1_735_689_600_000 + 1_800_000 * np.arange(n, dtype=np.int64)
    return Series(np.zeros((n, 1), np.float32), close, np.zeros(n), open_time, 10, 1_800_000, ["close"])


def _is_png(path: Path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_history_figure(tmp_path: Path) -> None:
    history = [
        {"epoch": e, "train_loss": 1.0 / e, **({"val_sharpe": 0.1 * e} if e % 2 == 0 else {})} for e in range(1, 8)
    ]
    plot_history({"seed 42": history, "seed 43": history[:3]}, tmp_path / "history.png")
    assert _is_png(tmp_path / "history.png")


@pytest.mark.slow  # a fresh Python process
def test_importing_plots_does_not_load_matplotlib() -> None:
    code = "import sys, diffquant.plots; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
