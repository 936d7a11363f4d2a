"""Paper-trading a portfolio's book on real shipped bars: three assets' hourly bars fed slot by slot, a two-member
dollar-neutral book deciding at the funding stamps with the band, the volatility target and the cap; its ledgers (one
per asset) book what the book's walk-forward engine books over the same two weeks, within 1e-6."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from diffquant.config import Config, Hysteresis, PortfolioConfig
from diffquant.data.contracts import to_ms
from diffquant.data.sources import RawData
from diffquant.data.splits import Series
from diffquant.data.universe import asset_features
from diffquant.deploy.book_bundle import BookBundle
from diffquant.deploy.book_paper import BookPaperTrader, Slot, compare_book, ledger_books
from diffquant.deploy.feeds import Bar
from diffquant.deploy.ledger import Ledger, LedgerError
from diffquant.deploy.paper import PaperSettings
from diffquant.deploy.paper_session import ReplaySource, book_replay_feed
from diffquant.evaluate.book import BookSeries, book_decisions, executed_book, walk_forward_book
from diffquant.evaluate.member import Member
from diffquant.model.portfolio import make_policy
from diffquant.sim.execution import decision_mask
from tests.study.test_fold_run import raw_until, tiny

SYMBOLS = ("BTCUSDT", "ETHUSDT", "XRPUSDT")
START, END = pd.Timestamp("2024-03-08", tz="UTC"), pd.Timestamp("2024-03-22", tz="UTC")
HYSTERESIS = (Hysteresis(), Hysteresis(enter_long=0.02, enter_short=0.02, exit=0.01, min_delta=0.005))


def config() -> Config:
    cfg = tiny(**{"data.symbols": list(SYMBOLS)})
    sim = dataclasses.replace(cfg.sim, rebalance_at="funding", band=0.04, vol_target=0.5, vol_window=0)
    model = dataclasses.replace(
        cfg.model, kind="portfolio", portfolio=PortfolioConfig(d_attn=8, n_heads=2, neutral="dollar")
    )
    return dataclasses.replace(cfg, sim=sim, model=model).validate()


@pytest.fixture(scope="module")
def raws() -> dict[str, RawData]:
    return {s: raw_until(s, "2024-03-23") for s in SYMBOLS}


def bundle_of(cfg: Config, n_features: int) -> BookBundle:
    members = []
    for seed, h in zip((0, 1), HYSTERESIS, strict=True):
        torch.manual_seed(seed)
        policy = make_policy(cfg.model, n_features, cfg.window.context)
        with torch.no_grad():
            nn.init.normal_(policy.attention.out.weight, std=0.5)  # context from the other assets, as trained
            policy.head.logits.bias.copy_(torch.tensor([0.0, 1.5]))  # open gates: a book that trades
        members.append(Member(f"seed_{seed}", policy.eval(), h))
    return BookBundle(tuple(members), SYMBOLS, cfg.features, cfg.data.timeframe_minutes, cfg.sim)


def engine_book(cfg: Config, raws: dict[str, RawData], bundle: BookBundle):
    """The fold's way: each asset's feature table, its test series with the context + lag warm-up, the members'
    batched book decisions, hysteresis, their mean, the book engine."""
    lag, ctx = cfg.sim.execution_lag_bars, cfg.window.context
    series = []
    for symbol in SYMBOLS:
        table = asset_features(raws[symbol], cfg).features
        table = table[table["open_time"] < END]
        start = int(np.searchsorted(to_ms(table["open_time"]), START.value // 1_000_000))
        rows = table.iloc[start - ctx - lag :]
        names = [c.removeprefix("x_") for c in rows.columns if c.startswith("x_")]
        series.append(
            Series(
                rows[[f"x_{n}" for n in names]].to_numpy(np.float32),
                rows["close"].to_numpy(),
                rows["funding_rate"].to_numpy(),
                to_ms(rows["open_time"]),
                ctx + lag,
                cfg.data.timeframe_minutes * 60_000,
                names,
            )
        )
    book = BookSeries.of(series, SYMBOLS)
    leverage = bundle.members[0].policy.leverage
    executed = np.mean(
        [executed_book(book_decisions(m.policy, book), m.hysteresis, leverage) for m in bundle.members], 0
    )
    return walk_forward_book(book, executed, cfg.sim, leverage=leverage, band=bundle.band)


def test_the_book_s_paper_replay_equals_the_engine_s_record(raws, tmp_path):
    cfg = config()
    assert cfg.model.decision_every == 8 and cfg.sim.vol_window == cfg.window.context - 1
    n_features = asset_features(raws["BTCUSDT"], cfg).features.filter(like="x_").shape[1]
    bundle = bundle_of(cfg, n_features)
    result = engine_book(cfg, raws, bundle)
    ledgers = {s: Ledger(str(tmp_path / f"{s}.db")) for s in SYMBOLS}
    trader = BookPaperTrader(bundle, ledgers, PaperSettings(cfg.sim))
    trader.start("test")
    sources = {s: ReplaySource(raws[s].bars, raws[s].funding) for s in SYMBOLS}
    trader.run(book_replay_feed(sources, bundle, cfg.sim.execution_lag_bars, START, END))

    time = result.record["time"]
    record = {
        s: pd.DataFrame(
            {
                "time": time,
                "position": a["weight"],
                **{k: a[k] for k in ("gross", "commission", "funding", "net")},
                "trade": a["trades"],
            }
        )
        for s, a in result.assets.items()
    }
    books = ledger_books(ledgers)
    worst = compare_book(books, record)
    assert max(worst.values()) < 1e-6, worst
    # the book's net return and equity, from the ledgers
    times = to_ms(time)
    rows = {s: b.set_index("open_time").reindex(times) for s, b in books.items()}
    net = sum(r["net"].to_numpy() for r in rows.values())
    np.testing.assert_allclose(net, result.record["net"].to_numpy(), rtol=0, atol=1e-6)
    equity = rows["BTCUSDT"]["equity"].to_numpy()
    np.testing.assert_allclose(
        equity / equity[0] * (1 + result.record["net"].iloc[0]), result.record["equity"], atol=1e-6
    )

    # the book is exercised: it trades at decision slots only, dollar-neutral within its cap, paying costs and funding
    weights = np.stack([rows[s]["position"].to_numpy() for s in SYMBOLS], 1)
    assert np.abs(weights).sum(1).max() > 0.2 and (np.abs(weights).sum(1) <= 1.0 + 1e-9).all()
    assert np.abs(weights.sum(1)).max() < 1e-7  # float32 networks, one slot vs the engine's batches: ~1e-8
    trades = result.record["trade"].to_numpy()
    decided = decision_mask(times - 2 * 3_600_000, 3_600_000, 8)  # the decision bar of each slot (lag 1)
    assert (trades > 0).sum() > 5 and (trades[~decided] == 0).all()
    assert (result.record["commission"] > 0).any() and (result.record["funding"] != 0).any()
    assert set(books["ETHUSDT"]["mode"]) == {"warmup", "trading", "holding"}


def test_the_book_trader_refuses_bad_slots_and_resuming(raws, tmp_path):
    cfg = config()
    bundle = bundle_of(cfg, asset_features(raws["BTCUSDT"], cfg).features.filter(like="x_").shape[1])
    ledgers = {s: Ledger(str(tmp_path / f"{s}.db")) for s in SYMBOLS}
    trader = BookPaperTrader(bundle, ledgers, PaperSettings(cfg.sim))
    trader.start("test")
    t = int(START.value // 1_000_000)
    good = Bar(t, 100.0, 101.0, 99.0, 100.5, 10.0, 0.0)
    trader.on_slot(Slot(t, {"BTCUSDT": good, "ETHUSDT": dataclasses.replace(good, high=90.0)}))
    trader.on_slot(Slot(t, {"BTCUSDT": good}))  # the same slot again
    assert len(ledgers["BTCUSDT"].book()) == 1 and ledgers["ETHUSDT"].book().empty
    assert list(ledgers["ETHUSDT"].events()["kind"]) == ["start", "invalid"]
    assert list(ledgers["BTCUSDT"].events()["kind"]) == ["start", "out_of_order"]
    with pytest.raises(LedgerError, match="resuming a book is not supported"):
        BookPaperTrader(bundle, {s: Ledger(str(tmp_path / f"{s}.db")) for s in SYMBOLS}, PaperSettings(cfg.sim)).start(
            "again"
        )
