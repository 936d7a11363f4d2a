"""The paper trader's ledger: every validated bar with its decision and booking, every refused input, in SQL.

SQLite by default, any SQLAlchemy URL (PostgreSQL) otherwise. One transaction per bar: a trader killed at any
instant leaves whole rows only, and resumes from the last one. Floats are stored as 8-byte IEEE values and member
states as JSON (``repr`` round-trips floats), so a resumed run's rows are bit for bit those of an uninterrupted one.

Tables: ``book`` (one row per validated bar, the identity of a run), ``events`` (refused bars, gaps, stale feeds,
starts and resumes, with wall-clock times: the log, not part of the identity), ``meta`` (what wrote the ledger).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd
import sqlalchemy as sa

from diffquant.errors import DiffQuantError

_meta = sa.MetaData()
BOOK = sa.Table(
    "book",
    _meta,
    sa.Column("open_time", sa.BigInteger, primary_key=True, autoincrement=False),  # Unix ms
    *(sa.Column(c, sa.Float(53), nullable=False) for c in ("open", "high", "low", "close", "volume")),
    sa.Column("num_trades", sa.Float(53)),
    sa.Column("funding_rate", sa.Float(53), nullable=False),
    sa.Column("missing_before", sa.Integer, nullable=False),  # bars missing between the previous row and this one
    sa.Column("mode", sa.String(16), nullable=False),  # warmup | trading | holding (no decision bar) | flat | paused
    sa.Column("raw_position", sa.Float(53)),  # the members' mean raw decision at this close (NULL: none taken)
    sa.Column("gate", sa.Float(53)),
    # the book's target from this close: its decision after hysteresis and the execution layer (band, volatility)
    sa.Column("executed", sa.Float(53), nullable=False),
    *(
        sa.Column(c, sa.Float(53), nullable=False)
        for c in ("position", "trade", "gross", "commission", "funding", "net", "equity")
    ),
    sa.Column("run_length", sa.Integer, nullable=False),  # consecutive bars ending here
    sa.Column("state", sa.Text, nullable=False),  # JSON: each member's [prev_raw, prev_delta, executed]
)
EVENTS = sa.Table(
    "events",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("open_time", sa.BigInteger),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("wall_time", sa.String(40), nullable=False),
)
META = sa.Table(
    "meta",
    _meta,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
BOOK_COLUMNS = tuple(c.name for c in BOOK.columns)


class LedgerError(DiffQuantError):
    """A ledger written by another model or configuration, or one that cannot be opened."""


def ledger_url(path_or_url: str) -> str:
    """A SQLAlchemy URL as given, or a file path as a SQLite URL."""
    return path_or_url if "://" in path_or_url else f"sqlite:///{path_or_url}"


class Ledger:
    def __init__(self, url: str) -> None:
        self.url = ledger_url(url)
        try:
            self.engine = sa.create_engine(self.url)
            _meta.create_all(self.engine)
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerError(f"ledger {self.url}: cannot open it ({exc.__class__.__name__}: {exc})") from None

    def claim(self, meta: Mapping[str, str]) -> bool:
        """Write ``meta`` into a new ledger, or check an existing one against it; True when resuming.

        Resuming with another model, costs or lag would mix two books in one ledger: refused, naming the key.
        """
        with self.engine.begin() as conn:
            stored = dict(conn.execute(sa.select(META.c.key, META.c.value)).all())
            if not stored:
                conn.execute(META.insert(), [{"key": k, "value": v} for k, v in meta.items()])
                return False
        differ = [k for k in meta if stored.get(k) != meta[k]]
        if differ:
            key = differ[0]
            raise LedgerError(
                f"ledger {self.url} was written with {key} = {stored.get(key)!r}, not {meta[key]!r}: resume it with "
                "the same model and settings, or give a new ledger (--ledger)"
            )
        return bool(self.last_rows(1))

    def append(self, row: Mapping[str, Any], events: list[dict[str, Any]]) -> None:
        """One bar's row and its events, in one transaction."""
        with self.engine.begin() as conn:
            conn.execute(BOOK.insert(), [dict(row)])
            if events:
                conn.execute(EVENTS.insert(), events)

    def log_events(self, events: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(EVENTS.insert(), events)

    def last_rows(self, n: int) -> list[dict[str, Any]]:
        """The last ``n`` book rows, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(BOOK).order_by(BOOK.c.open_time.desc()).limit(n)).mappings().all()
        return [dict(r) for r in reversed(rows)]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(BOOK)).scalar())

    def peak_equity(self) -> float:
        with self.engine.connect() as conn:
            return float(conn.execute(sa.select(sa.func.max(BOOK.c.equity))).scalar() or 1.0)

    def book(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(BOOK).order_by(BOOK.c.open_time)).mappings().all()
        return pd.DataFrame([dict(r) for r in rows], columns=list(BOOK_COLUMNS))

    def events(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(EVENTS).order_by(EVENTS.c.id)).mappings().all()
        return pd.DataFrame([dict(r) for r in rows], columns=[c.name for c in EVENTS.columns])

    def close(self) -> None:
        self.engine.dispose()


def member_states(row: Mapping[str, Any]) -> list[list[float]]:
    return [[float(v) for v in s] for s in json.loads(row["state"])]
