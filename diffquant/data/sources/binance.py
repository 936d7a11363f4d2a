"""Binance public monthly archives (data.binance.vision): USD-M futures klines and funding rates, via urllib.

Each month's zip is checked against its ``.CHECKSUM`` file when the server has one (a 404 there is fine: not every
mirror publishes them); the sha256 of every zip is recorded in meta either way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import urllib.error
import urllib.request
import zipfile

import numpy as np
import pandas as pd

from diffquant.config import BinanceConfig
from diffquant.data.contracts import validate_bars, validate_funding
from diffquant.data.sources._common import RawData, check_resolution, empty_funding, make_meta
from diffquant.errors import ConfigError, DataError

INTERVAL_MINUTES = {
    "1m": 1,
    "3m": 3,
    "5m": 5,
    "15m": 15,
    "30m": 30,
    "1h": 60,
    "2h": 120,
    "4h": 240,
    "6h": 360,
    "8h": 480,
    "12h": 720,
    "1d": 1440,
}
KLINE_COLUMNS = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
)
FUNDING_COLUMNS = ("calc_time", "funding_interval_hours", "last_funding_rate")
TIMEOUT_S = 60.0


def load_binance(cfg: BinanceConfig, symbol: str) -> RawData:
    """Download every month from ``cfg.start_month`` to ``cfg.end_month`` (inclusive)."""
    minutes = _interval_minutes(cfg.interval)
    months = _months(cfg.start_month, cfg.end_month)
    base = f"{cfg.base_url.rstrip('/')}/data/futures/um/monthly"
    inputs: dict[str, str] = {}
    parts = []
    for month in months:
        url = f"{base}/klines/{symbol}/{cfg.interval}/{symbol}-{cfg.interval}-{month}.zip"
        parts.append(validate_bars(_klines(_csv(url, _download(url, inputs), KLINE_COLUMNS)), url))
    span = f"Binance {symbol} {cfg.interval} klines {months[0]}..{months[-1]}"
    bars = validate_bars(pd.concat(parts, ignore_index=True), span)
    check_resolution(bars, minutes, span, "data.binance.interval")

    funding = empty_funding()
    if cfg.funding:
        parts = []
        for month in months:
            url = f"{base}/fundingRate/{symbol}/{symbol}-fundingRate-{month}.zip"
            parts.append(validate_funding(_funding(_csv(url, _download(url, inputs), FUNDING_COLUMNS)), url))
        funding = validate_funding(pd.concat(parts, ignore_index=True), f"Binance {symbol} funding")
    return RawData(bars, funding, make_meta("binance", symbol, minutes, inputs, funding=cfg.funding))


def _interval_minutes(interval: str) -> int:
    if interval not in INTERVAL_MINUTES:
        raise ConfigError(f"data.binance.interval: {interval!r} is not one of {', '.join(INTERVAL_MINUTES)}")
    return INTERVAL_MINUTES[interval]


def _months(start: str, end: str) -> list[str]:
    first, last = _month(start, "data.binance.start_month"), _month(end, "data.binance.end_month")
    if last < first:
        raise ConfigError(f"data.binance.end_month ({end}) is before data.binance.start_month ({start})")
    index = range(first.year * 12 + first.month - 1, last.year * 12 + last.month)  # months since year 0
    return [f"{i // 12:04d}-{i % 12 + 1:02d}" for i in index]


def _month(value: str, key: str) -> dt.date:
    try:
        return dt.datetime.strptime(value, "%Y-%m").date()
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not a month; write it as YYYY-MM") from None


def _fetch(url: str) -> bytes | None:
    """The body at ``url``, or None on 404; any other failure is a ``DataError``."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        reason = f"HTTP {exc.code} {exc.reason}"
    except OSError as exc:  # URLError, timeouts, refused connections
        reason = str(getattr(exc, "reason", exc))
    raise DataError(
        f"{url}: download failed ({reason}); check the network and data.binance.base_url, "
        "or use data.source: bundled (offline)"
    )


def _download(url: str, inputs: dict[str, str]) -> bytes:
    """Fetch a monthly zip, check it against ``<zip>.CHECKSUM`` when published, record its sha256."""
    data = _fetch(url)
    if data is None:
        raise DataError(
            f"{url}: not found (404); check data.symbol, data.binance.interval and the months "
            "(a month's archive is published after the month ends)"
        )
    digest = hashlib.sha256(data).hexdigest()
    listed = _fetch(f"{url}.CHECKSUM")
    if listed is not None:
        expected = (listed.decode("ascii", "replace").split() or [""])[0].lower()  # "<sha256>  <name>"
        if expected != digest:
            raise DataError(
                f"{url}: sha256 {digest} does not match its .CHECKSUM ({expected or 'empty'}); "
                "the download is corrupt or was altered, run the stage again"
            )
    inputs[url] = digest
    return data


def _csv(url: str, data: bytes, columns: tuple[str, ...]) -> pd.DataFrame:
    """The one CSV inside a monthly zip, named ``columns``; some archives start with a header row, some do not."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = [n for n in archive.namelist() if n.endswith(".csv")]
            if len(names) != 1:
                raise DataError(f"{url}: expected one CSV inside the zip, found {names}")
            text = archive.read(names[0])
    except zipfile.BadZipFile as exc:
        raise DataError(f"{url}: not a valid zip ({exc}); run the stage again") from None
    where = f"{url} ({names[0]})"
    has_header = not text[:1].isdigit()
    if has_header:
        header = tuple(text.split(b"\n", 1)[0].decode("ascii", "replace").strip().split(","))
        if header != columns:
            raise DataError(f"{where}: header {list(header)}, expected {list(columns)}")
    try:
        frame = pd.read_csv(io.BytesIO(text), header=None, skiprows=int(has_header))
    except ValueError as exc:
        raise DataError(f"{where}: cannot be parsed ({exc})") from None
    if frame.shape[1] != len(columns):
        raise DataError(f"{where}: {frame.shape[1]} columns, expected {len(columns)}: {', '.join(columns)}")
    frame.columns = list(columns)
    return frame


def _epoch_ms(values: pd.Series) -> np.ndarray:
    """Unix ms from Binance stamps in ms or microseconds.

    The binance-public-data README states that SPOT archives from 2025-01-01 carry microsecond stamps; other archives
    may follow. Stamps of this era are ~1.7e12 in ms and ~1.7e15 in microseconds, so the magnitude tells them apart
    in any file. Unparsable values become NaN and the contract check names their rows.
    """
    stamps = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return np.where(stamps >= 1e14, np.floor(stamps / 1000), stamps)


def _klines(frame: pd.DataFrame) -> pd.DataFrame:
    bars = frame[["open", "high", "low", "close", "volume", "count"]].rename(columns={"count": "num_trades"})
    return bars.assign(open_time=_epoch_ms(frame["open_time"]))[["open_time", *bars.columns]]


def _funding(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"funding_time": _epoch_ms(frame["calc_time"]), "funding_rate": frame["last_funding_rate"]})
