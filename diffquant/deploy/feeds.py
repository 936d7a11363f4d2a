"""Feeds of closed bars for the paper trader: a replay of a bars table, or Binance's kline stream.

A feed yields :class:`Bar` (a closed bar, unvalidated: the trader checks it) or :class:`Stale` (no closed bar for
longer than the timeframe plus a grace period). ``after``: the last bar the ledger holds; a feed starts past it.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from diffquant.data.contracts import MINUTE_MS, to_ms
from diffquant.data.features import funding_per_bar
from diffquant.errors import DataError


@dataclass(frozen=True)
class Bar:
    open_time: int  # Unix ms
    open: float
    high: float
    low: float
    close: float
    volume: float
    funding_rate: float  # charged during this bar (sum of the funding events in (open, open + timeframe])
    num_trades: float | None = None


@dataclass(frozen=True)
class Stale:
    last_open_time: int | None  # the last bar the feed gave
    waited_s: float


def replay_bars(bars: pd.DataFrame, funding: pd.DataFrame | None, timeframe_minutes: int) -> list[Bar]:
    """Canonical bars (+ funding events) -> the Bars a replay yields, funding assigned per bar as features do."""
    open_ms = to_ms(bars["open_time"])
    if funding is not None:
        rates = funding_per_bar(open_ms, funding, timeframe_minutes * MINUTE_MS)
    elif "funding_rate" in bars.columns:
        rates = bars["funding_rate"].to_numpy(np.float64)
    else:
        rates = np.zeros(len(bars))
    trades = bars["num_trades"].to_numpy(np.float64) if "num_trades" in bars.columns else [None] * len(bars)
    cols = [bars[c].to_numpy(np.float64) for c in ("open", "high", "low", "close", "volume")]
    return [
        Bar(int(t), float(o), float(h), float(lo), float(c), float(v), float(f), None if n is None else float(n))
        for t, o, h, lo, c, v, f, n in zip(open_ms, *cols, rates, trades, strict=True)
    ]


def replay(bars: list[Bar], after: int | None = None, bars_per_second: float = 0.0) -> Iterator[Bar]:
    """The bars past ``after``, at full speed or paced."""
    for bar in bars:
        if after is not None and bar.open_time <= after:
            continue
        if bars_per_second > 0:
            time.sleep(1.0 / bars_per_second)
        yield bar


def kline_bar(message: dict, funding: dict[int, float], timeframe_ms: int) -> Bar | None:
    """A closed bar from a Binance kline event (``e: kline``, ``k.x`` true), or None for an open one.

    ``funding``: settled rates by funding time (ms); the bar is charged those falling in (open, open + timeframe].
    """
    k = message["k"]
    if not k["x"]:
        return None
    t = int(k["t"])
    rate = sum(r for ts, r in funding.items() if t < ts <= t + timeframe_ms)
    return Bar(t, float(k["o"]), float(k["h"]), float(k["l"]), float(k["c"]), float(k["v"]), rate, float(k["n"]))


def interval(timeframe_minutes: int) -> str:
    """Binance's name of a kline interval: 30m, 1h, 4h, 1d."""
    if timeframe_minutes % 1440 == 0:
        return f"{timeframe_minutes // 1440}d"
    return f"{timeframe_minutes // 60}h" if timeframe_minutes % 60 == 0 else f"{timeframe_minutes}m"


def backfill(rest_url: str, symbol: str, timeframe_minutes: int, bars: int) -> list[Bar]:
    """The last ``bars`` closed klines and their funding from Binance's REST API (``rest_url``: e.g.
    https://fapi.binance.com), to warm a live trader up. The kline still open is left out."""
    tf_ms = timeframe_minutes * MINUTE_MS
    base = rest_url.rstrip("/")
    klines = _get_json(f"{base}/fapi/v1/klines?symbol={symbol}&interval={interval(timeframe_minutes)}&limit={bars + 1}")
    now_ms = int(time.time() * 1000)
    closed = [k for k in klines if int(k[0]) + tf_ms <= now_ms][-bars:]
    if not closed:
        return []
    events = _get_json(f"{base}/fapi/v1/fundingRate?symbol={symbol}&startTime={int(closed[0][0])}&limit=1000")
    funding = {int(e["fundingTime"]): float(e["fundingRate"]) for e in events}
    return [
        Bar(
            int(k[0]),
            float(k[1]),
            float(k[2]),
            float(k[3]),
            float(k[4]),
            float(k[5]),
            sum(r for ts, r in funding.items() if int(k[0]) < ts <= int(k[0]) + tf_ms),
            float(k[8]),
        )
        for k in closed
    ]


def _get_json(url: str) -> list:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError) as exc:
        raise DataError(f"{url}: {exc}; check the network and the symbol, or warm up from a bars file") from None


def binance(
    ws_url: str, symbol: str, timeframe_minutes: int, after: int | None = None, stale_after_s: float = 1860.0
) -> Iterator[Bar | Stale]:
    """Closed klines of ``symbol`` from a Binance futures stream (``ws_url``: e.g. wss://fstream.binance.com), with
    the funding rate from the mark-price stream: the rate last announced for a funding time is the one settled
    there. Needs ``aiohttp``; reconnects after a dropped connection; yields :class:`Stale` after ``stale_after_s``
    without a closed bar (a timeframe plus a grace period), and again every ``stale_after_s`` while none comes.
    """
    name = symbol.lower()
    stream = f"{ws_url.rstrip('/')}/stream?streams={name}@kline_{interval(timeframe_minutes)}/{name}@markPrice"
    inbox: queue.Queue = queue.Queue()
    stop = threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(_listen(stream, inbox, stop)), daemon=True)
    thread.start()
    funding: dict[int, float] = {}
    timeframe_ms = timeframe_minutes * MINUTE_MS
    last, waited_since = after, time.monotonic()
    try:
        while True:
            try:
                message = inbox.get(timeout=1.0)
            except queue.Empty:
                waited = time.monotonic() - waited_since
                if waited > stale_after_s:
                    yield Stale(last, waited)
                    waited_since = time.monotonic()
                continue
            data = message.get("data", message)
            if data.get("e") == "markPriceUpdate":
                funding[int(data["T"])] = float(data["r"])
            elif data.get("e") == "kline" and (bar := kline_bar(data, funding, timeframe_ms)) is not None:
                yield bar  # duplicates and disorder included: the trader judges and logs them
                for ts in [ts for ts in funding if ts <= bar.open_time]:
                    del funding[ts]
                waited_since = time.monotonic()
                last = bar.open_time
    finally:
        stop.set()


async def _listen(url: str, inbox: queue.Queue, stop: threading.Event) -> None:
    """Put every text message of ``url`` into ``inbox`` until ``stop`` is set; reconnect when the stream drops."""
    import aiohttp

    while not stop.is_set():
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(url, heartbeat=30) as ws:
                while not stop.is_set():
                    try:
                        msg = await ws.receive(timeout=1.0)
                    except TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        inbox.put(json.loads(msg.data))
                    elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        break
        except (aiohttp.ClientError, OSError):
            pass
        if not stop.is_set():
            await asyncio.sleep(1.0)  # then reconnect
