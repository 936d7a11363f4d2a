"""The paper trader as a process: killed mid-run and restarted, its ledger is bit for bit an uninterrupted run's;
its ledger on a real PostgreSQL server equals the SQLite one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from diffquant.config import from_dict
from diffquant.data.features import feature_names
from diffquant.deploy.ledger import Ledger
from diffquant.model.policy import PolicyNetwork
from diffquant.train import checkpoint
from tests.data.real_data import fixture_bars_30m, fixture_funding  # noqa: F401 (fixtures)
from tests.deploy.test_paper import SIM, TINY, _feed_bars, make_bundle
from tests.postgres import postgres
from tests.repo_copy import REPO, deep_update, env

pytestmark = pytest.mark.slow


@pytest.fixture(name="workdir")
def fixture_workdir(tmp_path: Path, bars_30m: pd.DataFrame, funding: pd.DataFrame) -> Path:
    """params.yaml with a tiny model, one seeded checkpoint, 300 bars and their funding."""
    small = {"model": TINY, "window": {"context": 24}, "baselines": {"momentum_lookbacks": [12]}}
    params = deep_update(yaml.safe_load((REPO / "params.yaml").read_text()), small)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cfg = from_dict(params)
    names = feature_names(cfg.features, has_num_trades=False)
    torch.manual_seed(0)
    policy = PolicyNetwork(cfg.model, len(names), 24)
    spec = checkpoint.policy_spec(cfg.model, names, 24)
    (tmp_path / "seed_0").mkdir()
    checkpoint.save(tmp_path / "seed_0" / "best.pt", {"spec": {"policy": spec}, "model_state": policy.state_dict()})
    bars_30m.iloc[2000:2300].to_parquet(tmp_path / "bars.parquet")
    funding.to_parquet(tmp_path / "funding.parquet")
    return tmp_path


def _paper(ledger: str, *extra: str) -> list[str]:
    inputs = ["--bars", "bars.parquet", "--funding", "funding.parquet", "--no-mlflow"]
    return [sys.executable, "-m", "stages.paper", "--model", "seed_0/best.pt", *inputs, "--ledger", ledger, *extra]


def test_a_killed_trader_resumes_to_a_bit_identical_ledger(workdir: Path) -> None:
    run_env = env(PYTHONPATH=str(REPO))
    subprocess.run(_paper("whole.db"), cwd=workdir, env=run_env, check=True, capture_output=True, timeout=600)
    victim = subprocess.Popen(_paper("cut.db", "--pace", "40"), cwd=workdir, env=run_env, stderr=subprocess.DEVNULL)
    ledger, deadline = Ledger(str(workdir / "cut.db")), time.time() + 300
    while not (workdir / "cut.db").exists() or ledger.count() < 120:
        assert victim.poll() is None and time.time() < deadline, "the trader ended before it could be killed"
        time.sleep(0.1)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    killed_at = ledger.count()
    assert killed_at < 300
    subprocess.run(_paper("cut.db"), cwd=workdir, env=run_env, check=True, capture_output=True, timeout=600)
    whole = Ledger(str(workdir / "whole.db")).book()
    assert len(whole) == 300 and ledger.book().equals(whole)
    assert list(ledger.events()["kind"]) == ["start", "resume"]


def test_a_postgresql_ledger_holds_the_sqlite_ledgers_rows(bars_30m, funding, tmp_path) -> None:
    from diffquant.deploy.paper import PaperSettings, PaperTrader

    bundle = make_bundle()
    bars = _feed_bars(bars_30m.iloc[2000:2150].reset_index(drop=True), funding)
    books = []
    with postgres() as url:
        for where in (url, str(tmp_path / "l.db")):
            trader = PaperTrader(bundle, Ledger(where), PaperSettings(SIM))
            trader.start("t")
            trader.run(bars)
            books.append(trader.ledger.book())
            trader.ledger.close()
    assert len(books[0]) == 150 and books[0].equals(books[1])
