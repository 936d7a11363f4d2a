"""Shared fixtures: one torch thread, small synthetic bar tables, and a tiny prepared repository copy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.repo_copy import commit, dvc, make_repo

START_MS = 1_704_067_200_000  # 2024-01-01 00:00 UTC


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One torch thread: the test models are tiny, and on a 2-core machine two OpenMP threads stall behind any other
    busy process (a 12 s module took minutes). The count is part of a result: 1 and 2 threads differ in the last
    bits of a float (diffquant.compute.grid), so tests that compare runs run them with the same count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_bars() -> Callable[..., pd.DataFrame]:
    """``make_bars(n, minutes)``: a random-walk bar table with Unix-ms ``open_time``, as a user file would hold it."""

    def make(n: int = 48, minutes: int = 5, seed: int = 0) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-3, n)))
        open_ = np.r_[100.0, close[:-1]]
        return pd.DataFrame(
            {
                "open_time": START_MS + np.arange(n, dtype=np.int64) * minutes * 60_000,
                "open": open_,
                "high": np.maximum(open_, close) * 1.0005,
                "low": np.minimum(open_, close) * 0.9995,
                "close": close,
                "volume": rng.uniform(1.0, 10.0, n),
            }
        )

    return make


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed tiny repository after ``dvc repro sanity`` (download .. split, sanity): tests clone it (cheap)
    instead of re-running the data stages, and never change it in place."""
    repo = make_repo(tmp_path_factory.mktemp("prepared"))
    dvc("repro", "sanity", cwd=repo)
    commit(repo, "data stages and sanity")
    return repo
