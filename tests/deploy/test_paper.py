"""The paper trader against the walk-forward engine, on real bars: same book, resumable, refusing bad feed data.

A bundle of two small untrained policies (real networks, seeded; training is not what is under test) with two
different hysteresis settings, so the members trade differently and the ensemble mean matters.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from diffquant.config import Config, FeatureConfig, Hysteresis, ModelConfig, SimConfig, build_section
from diffquant.data.contracts import to_ms
from diffquant.data.features import build_features, feature_columns
from diffquant.data.splits import Series
from diffquant.deploy.bundle import PolicyBundle
from diffquant.deploy.feeds import Bar, Stale, replay_bars
from diffquant.deploy.ledger import Ledger, LedgerError
from diffquant.deploy.paper import PaperSettings, PaperTrader
from diffquant.deploy.paper_session import ReplaySource, compare_with_record, load_bundle, read_record, replay_feed
from diffquant.errors import ConfigError, DataError
from diffquant.evaluate.hysteresis import apply_hysteresis
from diffquant.evaluate.member import Member
from diffquant.evaluate.walk_forward import policy_decisions, walk_forward
from diffquant.model.policy import PolicyNetwork
from diffquant.train import checkpoint
from tests.data.real_data import fixture_bars_30m, fixture_funding  # noqa: F401 (fixtures)

CTX = 24
TINY = {"itransformer": {"d_model": 8, "n_heads": 2, "n_layers": 1, "d_ff": 16}, "head": {"dense": [8]}}
HYSTERESIS = (Hysteresis(), Hysteresis(enter_long=0.02, enter_short=0.02, exit=0.01, min_delta=0.005))
SIM = SimConfig()
QUARTER = 80  # bars row where the compared stretch starts


def make_bundle(seeds: tuple[int, ...] = (0, 1)) -> PolicyBundle:
    cfg = build_section(ModelConfig, TINY, "model")
    members = []
    for seed, h in zip(seeds, HYSTERESIS, strict=False):
        torch.manual_seed(seed)
        members.append(Member(f"seed_{seed}", PolicyNetwork(cfg, 6, CTX), h))
    return PolicyBundle(tuple(members), FeatureConfig(), 30, SIM)


@pytest.fixture(name="bundle", scope="module")
def fixture_bundle() -> PolicyBundle:
    return make_bundle()


@pytest.fixture(name="bars", scope="module")
def fixture_bars(bars_30m: pd.DataFrame) -> pd.DataFrame:
    return bars_30m.iloc[2000:2400].reset_index(drop=True)


def engine_record(bundle: PolicyBundle, bars: pd.DataFrame, funding: pd.DataFrame) -> pd.DataFrame:
    """The evaluate stage's way: the features of the whole table, a series whose quarter starts at bars row QUARTER,
    each member's batched decisions through its hysteresis, the mean, the walk-forward engine."""
    table = build_features(bars, funding, bundle.features, 30)  # row i is bars row i + 1
    lag = SIM.execution_lag_bars
    rows = table.iloc[QUARTER - 1 - CTX - lag :]
    names = feature_columns(table)
    series = Series(
        features=rows[[f"x_{n}" for n in names]].to_numpy(np.float32),
        close=rows["close"].to_numpy(),
        funding=rows["funding_rate"].to_numpy(),
        open_time=to_ms(rows["open_time"]),
        start=CTX + lag,
        timeframe_ms=30 * 60_000,
        feature_names=names,
    )
    executed = [apply_hysteresis(policy_decisions(m.policy, series).raw, m.hysteresis) for m in bundle.members]
    return walk_forward(series, np.mean(executed, axis=0), SIM).record


def trade(bundle: PolicyBundle, bars: pd.DataFrame, funding: pd.DataFrame, url: str, **settings) -> PaperTrader:
    trader = PaperTrader(bundle, Ledger(url), PaperSettings(SIM, **settings))
    after = trader.start("test")
    start = pd.Timestamp(bars["open_time"].iloc[QUARTER])
    trader.run(replay_feed(ReplaySource(bars, funding), bundle, SIM.execution_lag_bars, start, None, after, 0.0))
    return trader


def test_replay_books_what_the_engine_books(bundle, bars, funding, tmp_path) -> None:
    """Bar by bar from a ledger = the engine over the same bars, to the network's float32 precision; the members
    trade (so hysteresis, costs and the mean are exercised) and funding is charged."""
    book = trade(bundle, bars, funding, str(tmp_path / "l.db")).ledger.book()
    record = engine_record(bundle, bars, funding)
    worst = compare_with_record(book, record)
    assert max(worst.values()) < 1e-6, worst
    assert (record["trade"] != 0).sum() > 5 and (record["funding"] != 0).any()
    assert (book["mode"].iloc[: bundle.min_bars - 1] == "warmup").all() and (book["mode"].iloc[-1] == "trading")


def test_a_crashed_trader_resumes_to_the_same_ledger(bundle, bars, funding, tmp_path) -> None:
    """Stopped at any bar and restarted on its ledger, the trader writes the rows of an uninterrupted run, bit for
    bit (raw decisions, member states, equity)."""
    whole = trade(bundle, bars, funding, str(tmp_path / "whole.db")).ledger.book()
    start = pd.Timestamp(bars["open_time"].iloc[QUARTER])
    feed = replay_feed(ReplaySource(bars, funding), bundle, SIM.execution_lag_bars, start, None, None, 0.0)
    first = PaperTrader(bundle, Ledger(str(tmp_path / "cut.db")), PaperSettings(SIM))
    first.start("test")
    first.run(itertools.islice(feed, 150))  # then it "dies": nothing is closed or flushed
    resumed = trade(bundle, bars, funding, str(tmp_path / "cut.db"))
    assert resumed.ledger.book().equals(whole)
    assert list(resumed.ledger.events()["kind"]) == ["start", "resume"]


def test_a_ledger_refuses_another_model(bundle, bars, funding, tmp_path) -> None:
    url = str(tmp_path / "l.db")
    PaperTrader(bundle, Ledger(url), PaperSettings(SIM)).start("a")
    other = make_bundle((2, 3))
    with pytest.raises(LedgerError, match="bundle"):
        PaperTrader(other, Ledger(url), PaperSettings(SIM)).start("b")


def _feed_bars(bars: pd.DataFrame, funding: pd.DataFrame) -> list[Bar]:
    return replay_bars(bars, funding, 30)


def test_bad_bars_are_refused_logged_and_nothing_is_lost(bundle, bars, funding, tmp_path) -> None:
    """Impossible values, an older bar, a changed copy of the last one: refused, each an event; an identical copy
    is ignored; the book is that of the clean feed."""
    clean = _feed_bars(bars, funding)[:120]
    bad = [
        dataclasses.replace(clean[60], open_time=clean[59].open_time),  # a changed copy of the last bar
        clean[59],  # an identical copy
        clean[30],  # an old bar
        dataclasses.replace(clean[60], close=float("nan")),
        dataclasses.replace(clean[60], high=clean[60].low * 0.99),
        dataclasses.replace(clean[60], open_time=clean[60].open_time + 1),  # off the grid
    ]
    dirty = [*clean[:60], *bad, *clean[60:]]
    reference = PaperTrader(bundle, Ledger(str(tmp_path / "clean.db")), PaperSettings(SIM))
    reference.start("t")
    reference.run(clean)
    trader = PaperTrader(bundle, Ledger(str(tmp_path / "dirty.db")), PaperSettings(SIM))
    trader.start("t")
    trader.run(dirty)
    assert trader.ledger.book().equals(reference.ledger.book())
    events = trader.ledger.events()
    assert list(events["kind"]) == ["start", "conflict", "duplicate", "out_of_order", "invalid", "invalid", "invalid"]
    assert "NaN" in events["detail"].iloc[4] and "high below" in events["detail"].iloc[5]


@pytest.mark.parametrize("on_gap", ["flatten", "pause"])
def test_a_gap_flattens_or_pauses_then_warms_up_again(bundle, bars, funding, tmp_path, on_gap) -> None:
    clean = _feed_bars(bars, funding)[:200]
    gapped = [*clean[:120], *clean[123:]]  # three bars missing before clean[123]
    trader = PaperTrader(bundle, Ledger(str(tmp_path / "l.db")), PaperSettings(SIM, on_gap=on_gap))
    trader.start("t")
    trader.run(gapped)
    book = trader.ledger.book().set_index("open_time")
    gap_bar = clean[123].open_time
    assert book.loc[gap_bar, "missing_before"] == 3 and book.loc[gap_bar, "mode"] != "trading"
    before = book.loc[clean[119].open_time, "executed"]
    waiting = book.loc[gap_bar:].iloc[: bundle.min_bars - 1]
    assert (waiting["mode"] == ("flat" if on_gap == "flatten" else "paused")).all()
    assert (waiting["raw_position"].isna()).all()  # no decision until min_bars consecutive bars
    expected = 0.0 if on_gap == "flatten" else before
    assert (waiting["executed"] == expected).all()
    assert book.loc[gap_bar:].iloc[bundle.min_bars - 1]["mode"] == "trading"
    assert book.loc[gap_bar, "gross"] == 0.0  # nothing is earned across missing bars, as in the engine
    kinds = list(trader.ledger.events()["kind"])
    assert kinds == ["start", "gap"]


def test_a_stale_feed_is_logged_and_the_book_holds(bundle, bars, funding, tmp_path) -> None:
    clean = _feed_bars(bars, funding)[:100]
    reference = PaperTrader(bundle, Ledger(str(tmp_path / "a.db")), PaperSettings(SIM))
    reference.start("t")
    reference.run(clean)
    trader = PaperTrader(bundle, Ledger(str(tmp_path / "b.db")), PaperSettings(SIM))
    trader.start("t")
    trader.run([*clean[:70], Stale(clean[69].open_time, 1900.0), *clean[70:]])
    assert trader.ledger.book().equals(reference.ledger.book())
    stale = trader.ledger.events().iloc[-1]
    assert stale["kind"] == "stale" and "1900 s" in stale["detail"]


def test_model_input_is_checked(bundle, bars) -> None:
    with pytest.raises(DataError, match=f"needs at least {bundle.min_bars}"):
        bundle.decide(bars.iloc[: bundle.min_bars - 1])
    with pytest.raises(DataError, match="not increasing"):
        bundle.decide(bars.iloc[::-1])
    with pytest.raises(DataError, match="one executed position"):
        bundle.decide(bars.iloc[: bundle.min_bars], positions=[0.0])


def test_decide_continues_a_book_from_given_positions(bundle, bars) -> None:
    """A served model continues a book: the hysteresis starts from the given executed position, not from flat."""
    single = dataclasses.replace(bundle, members=bundle.members[:1])
    out = single.decide(bars, positions=[0.5])
    raw, h = out["raw_position"].to_numpy(), single.members[0].hysteresis
    np.testing.assert_array_equal(out["position"].to_numpy(), apply_hysteresis(raw, h, 0.5))
    np.testing.assert_array_equal(single.decide(bars)["position"].to_numpy(), apply_hysteresis(raw, h))


def test_bundle_round_trips_through_its_folder(bundle, bars, tmp_path) -> None:
    checkpoints = {}
    names = ["open", "high", "low", "close", "volume", "rolling_vol"]
    for m in bundle.members:
        spec = checkpoint.policy_spec(build_section(ModelConfig, TINY, "model"), names, CTX)
        checkpoints[m.name] = tmp_path / f"{m.name}-src.pt"
        checkpoint.save(checkpoints[m.name], {"spec": {"policy": spec}, "model_state": m.policy.state_dict()})
    loaded = PolicyBundle.load(bundle.save(tmp_path / "bundle", checkpoints))
    assert loaded.fingerprint() == bundle.fingerprint()
    assert loaded.decide(bars).equals(bundle.decide(bars))


def test_a_fold_as_model_or_record_needs_its_asset(tmp_path) -> None:
    """A walk-forward fold holds every asset's policy: the paper trader refuses to guess which one to trade or check."""
    (tmp_path / "fold.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"is a walk-forward fold: name the asset to trade \(--symbol\)"):
        load_bundle(str(tmp_path), Config(), tmp_path)
    with pytest.raises(ConfigError, match=r"is a walk-forward fold: name the asset whose record to check"):
        read_record(tmp_path, None)
