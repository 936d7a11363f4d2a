"""The reliability tests' shared starting point: one tiny repository copy with the data stages and sanity done."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.repo_copy import commit, dvc, make_repo


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed tiny repository after ``dvc repro sanity`` (download .. split, sanity): tests clone it (cheap)
    instead of re-running the data stages, and never change it in place."""
    repo = make_repo(tmp_path_factory.mktemp("prepared"))
    dvc("repro", "sanity", cwd=repo)
    commit(repo, "data stages and sanity")
    return repo
