"""The paper trader: closed bars in, validated, decided and booked as the walk-forward engine does, one ledger row each.

Per bar ``j`` that passes validation, in one ledger transaction:

1. **book** bar ``j``: the position held during it is the book's decision at the close of bar ``j - 1 - L``
   (L = ``sim.execution_lag_bars``; flat before the first decision), priced by the one simulator
   (``simulate(..., exact=True)`` on that single bar, continuing from the previous bar's position): the engine's
   per-bar record, term for term. A bar after missing ones earns no return across them, as in the engine.
2. **decide** at its close, if it is a decision bar of the clock (``sim.rebalance_every`` / ``rebalance_at``; else
   the book holds its last target): the features of the last ``min_bars`` consecutive bars, each member's policy
   continued from its state, its hysteresis, the members' mean (``PolicyBundle.step``), then the execution layer
   (``Execution.step``: the volatility scale from the tail's returns, the no-trade band from the last target), as
   the engine's ``Execution.held`` does at that bar.

Bad input never reaches the book: a bar with impossible values, one older than the last, or a changed copy of the
last is refused and logged in ``events``; an identical copy is ignored (logged). Missing bars (a gap) are logged and
handled by ``on_gap``: ``flatten`` closes the book at that close and ``pause`` holds it; either way no decision is
taken until ``min_bars`` consecutive bars exist again (the policies then restart from a flat state, as the engine
does at a series' start). A stale feed (no bar for a timeframe and a grace period) is logged; nothing can be traded
without a price, so the book holds, and a gap rule applies if bars were missed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import torch

from diffquant.config import SimConfig
from diffquant.data.contracts import MINUTE_MS, from_ms
from diffquant.deploy.bundle import MemberState, PolicyBundle, book_position
from diffquant.deploy.feeds import Bar, Stale
from diffquant.deploy.ledger import Ledger, member_states
from diffquant.errors import ConfigError
from diffquant.evaluate.metrics import annualization, sharpe
from diffquant.sim.execution import Execution, decision_mask
from diffquant.sim.simulator import bar_returns, simulate

log = logging.getLogger("diffquant.paper")

GapAction = Literal["flatten", "pause"]
BAR_FIELDS = ("open_time", "open", "high", "low", "close", "volume", "num_trades", "funding_rate")


class MetricsSink(Protocol):
    """Where live metrics go (an MLflow run); ``row`` is the ledger row just written."""

    def bar(self, index: int, row: dict[str, Any], drawdown: float, rolling_sharpe: float | None) -> None: ...

    def event(self, kind: str, detail: str) -> None: ...


@dataclass(frozen=True)
class PaperSettings:
    sim: SimConfig
    on_gap: GapAction = "flatten"
    ann: float = annualization(30)  # the rolling Sharpe's sqrt(bars per year), evaluate's definition
    sharpe_window: int = 1440  # bars in the rolling Sharpe (30 days of 30-minute bars)


def bar_problem(bar: Bar, timeframe_ms: int) -> str | None:
    """Why a bar cannot be traded on, or None."""
    values = (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.funding_rate)
    if not all(math.isfinite(v) for v in values):
        return "a NaN or infinite value"
    if min(bar.open, bar.high, bar.low, bar.close) <= 0:
        return "a price <= 0"
    if bar.high < max(bar.open, bar.close, bar.low) or bar.low > min(bar.open, bar.close):
        return "high below open/close/low or low above open/close"
    if bar.volume < 0 or (bar.num_trades is not None and not bar.num_trades >= 0):
        return "a negative volume or trade count"
    if bar.open_time % timeframe_ms:
        return f"open_time {bar.open_time} off the {timeframe_ms // MINUTE_MS}-minute grid"
    return None


def _iso(ms: int | None) -> str:
    return "-" if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")


class PaperTrader:
    def __init__(
        self, bundle: PolicyBundle, ledger: Ledger, settings: PaperSettings, sink: MetricsSink | None = None
    ) -> None:
        if bundle.input_columns:
            raise ConfigError(
                f"this policy's features read {bundle.input_columns} besides the bars (features.funding, premium, "
                "market or columns), which the paper trader's feeds do not carry: it trades policies of the "
                "price/volume features; serve this one through its MLflow model, whose input table has those columns"
            )
        self.bundle, self.ledger, self.settings, self.sink = bundle, ledger, settings, sink
        self.tf_ms = bundle.timeframe_minutes * MINUTE_MS
        self.lag = settings.sim.execution_lag_bars
        self.execution = Execution.of(settings.sim, self.tf_ms, band=bundle.band)
        self.tail: deque[dict[str, Any]] = deque(maxlen=bundle.min_bars)
        self.executed: deque[float] = deque(maxlen=self.lag + 1)  # the book's decisions of the last L + 1 bars
        self.nets: deque[float] = deque(maxlen=settings.sharpe_window)
        self.states = tuple(MemberState() for _ in bundle.members)
        self.last: dict[str, Any] | None = None
        self.rows = 0
        self.peak = 1.0

    def meta(self) -> dict[str, str]:
        """What a ledger is bound to: resuming it with anything else is refused."""
        return {
            "bundle": self.bundle.fingerprint(),
            "members": json.dumps(self.bundle.member_names),
            "timeframe_minutes": str(self.bundle.timeframe_minutes),
            "sim": json.dumps(asdict(self.settings.sim), sort_keys=True),
            "on_gap": self.settings.on_gap,
        }

    def start(self, model: str) -> int | None:
        """Claim the ledger for this bundle (``model`` names it in the log); when the ledger holds rows, continue from
        its last one. Returns that row's open_time (the feed starts past it), None for a new ledger."""
        resuming = self.ledger.claim(self.meta())
        if not resuming:
            self.ledger.log_events([self._event(None, "start", f"new ledger for {model}")])
            return None
        rows = self.ledger.last_rows(max(self.bundle.min_bars, self.lag + 1, self.settings.sharpe_window))
        self.last = rows[-1]
        run = min(self.last["run_length"], self.bundle.min_bars)
        self.tail.extend({k: r[k] for k in BAR_FIELDS} for r in rows[-run:])
        self.executed.extend(r["executed"] for r in rows[-(self.lag + 1) :])
        self.nets.extend(r["net"] for r in rows)
        self.states = tuple(MemberState(*s) for s in member_states(self.last))
        self.rows = self.ledger.count()
        self.peak = self.ledger.peak_equity()
        self.ledger.log_events([self._event(self.last["open_time"], "resume", f"resumed after {self.rows} bars")])
        log.info("resuming %s after %d bars (last %s)", self.ledger.url, self.rows, _iso(self.last["open_time"]))
        return int(self.last["open_time"])

    def run(self, feed: Iterable[Bar | Stale]) -> None:
        for item in feed:
            if isinstance(item, Stale):
                since = _iso(item.last_open_time)
                self._refuse(None, "stale", f"no closed bar for {item.waited_s:.0f} s after {since}: holding the book")
            else:
                self.on_bar(item)

    def on_bar(self, bar: Bar) -> None:
        """Validate, book and decide one closed bar (one ledger row), or refuse it (one event)."""
        problem = bar_problem(bar, self.tf_ms)
        if problem:
            return self._refuse(bar, "invalid", f"bar {_iso(bar.open_time)} refused: {problem}: {bar}")
        missing = 0
        if self.last is not None:
            previous = int(self.last["open_time"])
            if bar.open_time == previous:
                same = all(self.last[k] == getattr(bar, k) for k in BAR_FIELDS)
                kind = "duplicate" if same else "conflict"
                what = "an identical copy, ignored" if same else f"differs from the booked one, refused: {bar}"
                return self._refuse(bar, kind, f"bar {_iso(bar.open_time)} again: {what}")
            if bar.open_time < previous:
                return self._refuse(bar, "out_of_order", f"bar {_iso(bar.open_time)} after {_iso(previous)}: refused")
            missing = (bar.open_time - previous) // self.tf_ms - 1
        events = []
        if missing:
            action = "closing the book" if self.settings.on_gap == "flatten" else "holding the book"
            detail = f"{missing} bar(s) missing before {_iso(bar.open_time)}: {action}, deciding again after warm-up"
            events.append(self._event(bar.open_time, "gap", detail))
            log.warning(detail)
        row = self._book(bar, missing)
        row.update(self._decide(bar, missing))
        equity = (1.0 if self.last is None else self.last["equity"]) * (1.0 + row["net"])
        row["equity"] = equity
        self.ledger.append(row, events)
        self.last, self.rows, self.peak = row, self.rows + 1, max(self.peak, equity)
        self.executed.append(row["executed"])
        self.nets.append(row["net"])
        if self.sink is not None:
            self.sink.bar(self.rows, row, equity / self.peak - 1.0, self._rolling_sharpe())
        return None

    def _book(self, bar: Bar, missing: int) -> dict[str, Any]:
        held = self.executed[0] if len(self.executed) == self.lag + 1 else 0.0
        before = 0.0 if self.last is None else self.last["position"]
        ret = 0.0  # no previous close, or none across the missing bars
        if self.last is not None and not missing:
            ret = float(bar_returns(np.array([self.last["close"], bar.close]))[0])
        sim = simulate(
            torch.tensor([[held]], dtype=torch.float64),
            torch.tensor([[ret]], dtype=torch.float64),
            torch.tensor([[bar.funding_rate]], dtype=torch.float64),
            self.settings.sim,
            prev_position=torch.tensor([before], dtype=torch.float64),
            exact=True,
        )
        row = {k: getattr(bar, k) for k in BAR_FIELDS}
        row.update(
            missing_before=int(missing),
            position=held,
            trade=float(sim.trades[0, 0]),
            gross=float(sim.gross[0, 0]),
            commission=float(sim.commission[0, 0]),
            funding=float(sim.funding[0, 0]),
            net=float(sim.net[0, 0]),
        )
        return row

    def _decide(self, bar: Bar, missing: int) -> dict[str, Any]:
        after_gap = bool(missing) or (self.last is not None and self.last["mode"] in ("flat", "paused"))
        if missing:
            self.tail.clear()
            held = self.settings.on_gap == "pause"
            self.states = tuple(MemberState(executed=s.executed if held else 0.0) for s in self.states)
        run_length = 1 if self.last is None or missing else self.last["run_length"] + 1
        self.tail.append({k: getattr(bar, k) for k in BAR_FIELDS})
        decision: dict[str, Any] = {"run_length": run_length, "raw_position": None, "gate": None}
        if len(self.tail) < self.bundle.min_bars:
            mode = ("flat" if self.settings.on_gap == "flatten" else "paused") if after_gap else "warmup"
            held = mode == "paused" and self.last is not None  # a paused book holds its last target, as executed
            decision.update(mode=mode, executed=self.last["executed"] if held else book_position(self.states))
        elif not decision_mask(np.array([bar.open_time]), self.tf_ms, self.execution.period)[0]:
            decision.update(mode="holding", executed=0.0 if self.last is None else self.last["executed"])
        else:
            step = self.bundle.step(self._tail_frame(), self.states)
            self.states = step.states
            prev = np.array(0.0 if self.last is None else self.last["executed"])
            target = float(self.execution.step(prev, np.array(step.position), self._tail_returns()))
            decision.update(mode="trading", raw_position=step.raw, gate=step.gate, executed=target)
        decision["state"] = json.dumps([s.as_list() for s in self.states])
        return decision

    def _tail_frame(self) -> pd.DataFrame:
        """The tail as a bars table; a feed without trade counts gives no num_trades column (not a NaN one)."""
        columns = [c for c in BAR_FIELDS if c != "funding_rate"]
        if self.tail[-1]["num_trades"] is None:
            columns.remove("num_trades")
        frame = pd.DataFrame({c: [bar[c] for bar in self.tail] for c in columns})
        frame["open_time"] = from_ms(frame["open_time"].to_numpy())
        return frame

    def _tail_returns(self) -> np.ndarray | None:
        """The simple returns between the tail's closes (consecutive bars), for the volatility estimate."""
        if not self.execution.vol_target:
            return None
        return bar_returns(np.array([bar["close"] for bar in self.tail], dtype=np.float64))

    def _rolling_sharpe(self) -> float | None:
        return sharpe(np.fromiter(self.nets, dtype=np.float64), self.settings.ann) if len(self.nets) > 1 else None

    def _event(self, open_time: int | None, kind: str, detail: str) -> dict[str, Any]:
        wall = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return {"open_time": open_time, "kind": kind, "detail": detail, "wall_time": wall}

    def _refuse(self, bar: Bar | None, kind: str, detail: str) -> None:
        log.warning("%s: %s", kind, detail)
        self.ledger.log_events([self._event(None if bar is None else bar.open_time, kind, detail)])
        if self.sink is not None:
            self.sink.event(kind, detail)
