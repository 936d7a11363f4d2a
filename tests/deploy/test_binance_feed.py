"""The Binance feed against a local server this test starts (REST klines and funding, a websocket stream): nothing
leaves the machine. A trader fed by it books exactly what a replay of the same bars books."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd
from aiohttp import web

from diffquant.deploy.feeds import Bar, interval, kline_bar
from diffquant.deploy.ledger import Ledger
from diffquant.deploy.paper import PaperSettings, PaperTrader
from diffquant.deploy.paper_session import live_feed
from tests.data.real_data import fixture_bars_30m, fixture_funding  # noqa: F401 (fixtures)
from tests.deploy.test_paper import SIM, _feed_bars, make_bundle

TF_MS = 30 * 60_000


def _kline(bar: Bar, closed: bool) -> dict:
    k = {"t": bar.open_time, "T": bar.open_time + TF_MS - 1, "i": "30m", "x": closed, "n": 0}
    k.update(o=str(bar.open), h=str(bar.high), l=str(bar.low), c=str(bar.close), v=str(bar.volume))
    return {"e": "kline", "E": bar.open_time + TF_MS, "s": "BTCUSDT", "k": k}


def _rest_kline(bar: Bar) -> list:
    """REST's kline row: open time, OHLCV as strings, close time, quote volume, trade count, taker volumes, unused."""
    prices = [str(v) for v in (bar.open, bar.high, bar.low, bar.close, bar.volume)]
    return [bar.open_time, *prices, bar.open_time + TF_MS - 1, "0", 0, "0", "0", "0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fake_binance(history: list[Bar], funding_events: list[dict], stream: list[dict]) -> Iterator[str]:
    """REST (/fapi/v1/klines, /fapi/v1/fundingRate) and a combined stream (/stream) on 127.0.0.1; yields the URL."""

    async def klines(request: web.Request) -> web.Response:
        return web.json_response([_rest_kline(b) for b in history])

    async def funding(request: web.Request) -> web.Response:
        return web.json_response(funding_events)

    async def ws(request: web.Request) -> web.WebSocketResponse:
        assert request.query["streams"] == f"btcusdt@kline_{interval(30)}/btcusdt@markPrice"
        socket_ = web.WebSocketResponse()
        await socket_.prepare(request)
        for message in stream:
            await socket_.send_str(json.dumps({"stream": "x", "data": message}))
        await socket_.receive()  # held open until the client or the server closes it
        return socket_

    app = web.Application()
    app.router.add_get("/fapi/v1/klines", klines)
    app.router.add_get("/fapi/v1/fundingRate", funding)
    app.router.add_get("/stream", ws)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    port = _free_port()
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)  # closes the open websocket
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_kline_bar_takes_closed_klines_and_their_funding() -> None:
    bar = Bar(1_700_000_000_000 - 1_700_000_000_000 % TF_MS, 1.0, 2.0, 0.5, 1.5, 10.0, 0.0, 3.0)
    funding = {bar.open_time + TF_MS: 0.0001, bar.open_time: 0.5}  # only (open, open + tf] is this bar's
    assert kline_bar(_kline(bar, closed=False), funding, TF_MS) is None
    got = kline_bar(_kline(bar, closed=True), funding, TF_MS)
    assert got == Bar(bar.open_time, 1.0, 2.0, 0.5, 1.5, 10.0, 0.0001, 0.0)


def test_a_trader_on_the_stream_books_what_a_replay_books(bars_30m, funding, tmp_path) -> None:
    bundle = make_bundle()
    bars = bars_30m.iloc[3000:3120].reset_index(drop=True)
    events = funding[(funding["funding_time"] > bars["open_time"].iloc[0])]
    events = events[events["funding_time"] <= bars["open_time"].iloc[-1] + pd.Timedelta(minutes=30)]
    clean = _feed_bars(bars, events)
    warm = bundle.min_bars + SIM.execution_lag_bars
    history, live = clean[:warm], clean[warm:]
    rates = [
        {"fundingTime": int(t.value // 1_000_000), "fundingRate": str(r)}
        for t, r in zip(events["funding_time"], events["funding_rate"], strict=True)
    ]
    stream = []
    for bar in live:  # the rate announced before each funding instant, then the bar open and closed
        for e in rates:
            if bar.open_time < e["fundingTime"] <= bar.open_time + TF_MS:
                stream.append({"e": "markPriceUpdate", "T": e["fundingTime"], "r": e["fundingRate"]})
        stream += [_kline(bar, closed=False), _kline(bar, closed=True)]
    stream.append(_kline(live[-1], closed=True))  # a repeated closed kline: the trader ignores it (logged)

    replayed = PaperTrader(bundle, Ledger(str(tmp_path / "replay.db")), PaperSettings(SIM))
    replayed.start("t")
    replayed.run(clean)
    with fake_binance(history, [r for r in rates if r["fundingTime"] <= history[-1].open_time + TF_MS], stream) as url:
        trader = PaperTrader(bundle, Ledger(str(tmp_path / "live.db")), PaperSettings(SIM))
        after = trader.start("t")
        feed = live_feed(url.replace("http", "ws"), url, "BTCUSDT", bundle, SIM.execution_lag_bars, after, 60.0)
        trader.run(itertools.islice(feed, len(clean) + 1))
        feed.close()  # stops the stream's thread, which closes the websocket
    live_book, replay_book = trader.ledger.book(), replayed.ledger.book()
    assert (live_book["num_trades"] == 0).all()  # the stream gives trade counts, the shipped bars do not
    assert live_book.drop(columns="num_trades").equals(replay_book.drop(columns="num_trades"))
    assert (live_book["funding_rate"] != 0).any()
    assert list(trader.ledger.events()["kind"]) == ["start", "duplicate"]
