"""The paper trader with the execution layer on (a decision every 2 hours, the no-trade band, a volatility target):
replayed bar by bar, it books what the walk-forward engine books over the same real bars, and resumes to the same
ledger after a crash."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from diffquant.config import FeatureConfig, ModelConfig, SimConfig, build_section
from diffquant.data.contracts import to_ms
from diffquant.data.features import build_features, feature_columns
from diffquant.data.splits import Series
from diffquant.deploy.bundle import PolicyBundle
from diffquant.deploy.ledger import Ledger
from diffquant.deploy.paper import PaperSettings, PaperTrader
from diffquant.deploy.paper_session import ReplaySource, compare_with_record, replay_feed
from diffquant.evaluate.hysteresis import apply_hysteresis
from diffquant.evaluate.member import Member
from diffquant.evaluate.walk_forward import policy_decisions, walk_forward
from diffquant.model.policy import PolicyNetwork
from diffquant.sim.execution import decision_mask
from tests.data.real_data import fixture_bars_30m, fixture_funding  # noqa: F401 (fixtures)
from tests.deploy.test_paper import CTX, HYSTERESIS, QUARTER, TINY

EVERY = 4  # 30-minute bars: decisions at the closes 00:00, 02:00, ...
SIM = SimConfig(rebalance_every=EVERY, band=0.03, vol_target=0.6, vol_window=16)


def make_bundle(sim: SimConfig, floor: float | None = None) -> PolicyBundle:
    cfg = dataclasses.replace(build_section(ModelConfig, TINY, "model"), decision_every=EVERY, band_floor=floor)
    members = []
    for seed, h in zip((0, 1), HYSTERESIS, strict=True):
        torch.manual_seed(seed)
        policy = PolicyNetwork(cfg, 6, CTX)
        with torch.no_grad():
            policy.head.logits.bias[1] = 1.5  # open gates: positions large enough for the band to matter
            if floor is not None:
                policy.band.theta.fill_(-3.0 - seed)  # two learned widths: the book trades their mean
        members.append(Member(f"seed_{seed}", policy, h))
    return PolicyBundle(tuple(members), FeatureConfig(), 30, sim)


def engine_record(bundle: PolicyBundle, bars: pd.DataFrame, funding: pd.DataFrame) -> pd.DataFrame:
    """As tests/deploy/test_paper.py's, under the bundle's execution (and its learned band, if any)."""
    sim = bundle.sim
    table = build_features(bars, funding, bundle.features, 30)
    lag = sim.execution_lag_bars
    rows = table.iloc[QUARTER - 1 - CTX - lag :]
    names = feature_columns(table)
    series = Series(
        rows[[f"x_{n}" for n in names]].to_numpy(np.float32),
        rows["close"].to_numpy(),
        rows["funding_rate"].to_numpy(),
        to_ms(rows["open_time"]),
        CTX + lag,
        30 * 60_000,
        names,
    )
    executed = [apply_hysteresis(policy_decisions(m.policy, series).raw, m.hysteresis) for m in bundle.members]
    return walk_forward(series, np.mean(executed, axis=0), sim, band=bundle.band).record


def feed(bundle: PolicyBundle, bars: pd.DataFrame, funding: pd.DataFrame, after: int | None):
    start = pd.Timestamp(bars["open_time"].iloc[QUARTER])
    return replay_feed(ReplaySource(bars, funding), bundle, bundle.sim.execution_lag_bars, start, None, after, 0.0)


@pytest.fixture(name="bars", scope="module")
def fixture_bars(bars_30m: pd.DataFrame) -> pd.DataFrame:
    return bars_30m.iloc[2000:2400].reset_index(drop=True)


@pytest.mark.parametrize("learned", [False, True])
def test_the_paper_trader_books_what_the_engine_books_with_the_execution_layer_on(bars, funding, tmp_path, learned):
    bundle = make_bundle(
        dataclasses.replace(SIM, band_learned=learned, band=0.01 if learned else SIM.band), 0.01 if learned else None
    )
    trader = PaperTrader(bundle, Ledger(str(tmp_path / "l.db")), PaperSettings(bundle.sim))
    trader.run(feed(bundle, bars, funding, trader.start("test")))
    book = trader.ledger.book()
    record = engine_record(bundle, bars, funding)
    worst = compare_with_record(book, record)
    assert max(worst.values()) < 1e-6, worst
    trades = record["trade"].to_numpy()
    assert (trades != 0).sum() > 5
    decided = decision_mask(to_ms(record["time"]), 30 * 60_000, EVERY)  # bar j's decision bar is j - 2 (lag 1)
    assert (trades[np.r_[False, False, ~decided[:-2]]] == 0).all()  # positions change only after decision bars
    assert set(book["mode"]) >= {"warmup", "trading", "holding"}
    untargeted = engine_record(
        dataclasses.replace(bundle, sim=dataclasses.replace(bundle.sim, vol_target=0.0)), bars, funding
    )
    assert not np.allclose(untargeted["position"], record["position"])  # the volatility target acted
    if learned:
        assert bundle.band == pytest.approx(0.01 + np.mean([np.log1p(np.exp(-3.0)), np.log1p(np.exp(-4.0))]))


def test_a_crashed_trader_resumes_with_the_execution_layer_on(bars, funding, tmp_path):
    bundle = make_bundle(SIM)
    whole = PaperTrader(bundle, Ledger(str(tmp_path / "whole.db")), PaperSettings(SIM))
    whole.run(feed(bundle, bars, funding, whole.start("test")))
    first = PaperTrader(bundle, Ledger(str(tmp_path / "cut.db")), PaperSettings(SIM))
    first.run(itertools.islice(feed(bundle, bars, funding, first.start("test")), 151))
    resumed = PaperTrader(bundle, Ledger(str(tmp_path / "cut.db")), PaperSettings(SIM))
    resumed.run(feed(bundle, bars, funding, resumed.start("test")))
    assert resumed.ledger.book().equals(whole.ledger.book())
