"""The paper trader of a portfolio's book: every asset's closed bars on one clock, one decision for the whole book,
a ledger per asset; booked as the book's walk-forward engine (``evaluate.book``) books it.

A feed yields :class:`Slot`s: an open time and the bars of the assets that have one then (``book_slots`` merges each
asset's feed). Per slot, the trader

1. **books** it: each asset holds the book's target of the slot ``1 + lag`` slots back (flat before the first), earns
   its own return since its previous bar (none across a missing bar) and pays its funding; the one simulator prices
   the (1, 1, A) book from the previous slot's weights (``simulate(..., exact=True)``);
2. **decides** at its close, if it is a decision slot of the clock: each asset with a full tail of consecutive bars
   (the features' warm-up and a context) is present; each member's network reads the present assets' windows
   (``book.slot_logits``) and steps its recursion with the book's neutrality and cap (``book.book_step``), its
   hysteresis per asset, the book made again (``book.rebook``); the members' mean then goes through the execution
   layer (``Execution.step``: the volatility scale from the book's last returns, the cap, the band from the last
   target). Between decision slots the target is held;
3. writes one row per asset with a bar into that asset's ledger (``ledger.Ledger``'s ``book`` table, in one
   transaction per asset): its bar, the book's target weight for it (``executed``), the weight it held
   (``position``), its trade, gross, commission, funding and net (its part of the book's return), the book's equity,
   and each member's state for it.

An asset whose bar is missing at a slot earns nothing there and is absent (weight 0 from the next decision) until its
tail is full again: the engine's treatment of an asset without data. Bad bars are refused and logged in the asset's
ledger; a slot not later than the last is refused. Resuming a book's ledgers after a stop is not supported: a trader
claims new ledgers only (docs/paper_trading.md, "Limits").
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from diffquant.data.contracts import MINUTE_MS, from_ms, to_ms
from diffquant.deploy.book_bundle import BookBundle
from diffquant.deploy.bundle import feature_series
from diffquant.deploy.feeds import Bar
from diffquant.deploy.ledger import Ledger, LedgerError
from diffquant.deploy.paper import BAR_FIELDS, MetricsSink, PaperSettings, bar_problem
from diffquant.errors import ConfigError, DataError
from diffquant.evaluate.book import BookState, book_step, rebook, slot_logits
from diffquant.evaluate.hysteresis import apply_hysteresis
from diffquant.evaluate.metrics import sharpe
from diffquant.sim.execution import Execution, decision_mask, market_betas
from diffquant.sim.simulator import bar_returns, simulate

log = logging.getLogger("diffquant.paper")

PARTS = ("trade", "gross", "commission", "funding", "net")


@dataclass(frozen=True)
class Slot:
    open_time: int  # Unix ms
    bars: dict[str, Bar]  # the assets with a closed bar at this open time


def book_slots(feeds: Mapping[str, Iterable[Bar]]) -> Iterator[Slot]:
    """Each asset's bars (oldest first) merged into slots by open time, oldest first."""
    by_time: dict[int, dict[str, Bar]] = {}
    for symbol, bars in feeds.items():
        for bar in bars:
            by_time.setdefault(int(bar.open_time), {})[symbol] = bar
    for open_time in sorted(by_time):
        yield Slot(open_time, by_time[open_time])


@dataclass
class MemberBook:
    """One member's state: its recursion (``BookState``) and each asset's position after its hysteresis."""

    recursion: BookState
    hysteresis: np.ndarray  # (A,)


class BookPaperTrader:
    def __init__(
        self,
        bundle: BookBundle,
        ledgers: Mapping[str, Ledger],
        settings: PaperSettings,
        sink: MetricsSink | None = None,
    ) -> None:
        if bundle.input_columns:
            raise ConfigError(
                f"this book's features read {bundle.input_columns} besides the bars, which the paper trader's feeds "
                "do not carry: it trades books of the price/volume features"
            )
        missing = sorted(set(bundle.symbols) - set(ledgers))
        if missing:
            raise ConfigError(f"no ledger for {missing}: the book trades {list(bundle.symbols)}, one ledger each")
        self.bundle, self.ledgers, self.settings, self.sink = bundle, ledgers, settings, sink
        self.symbols = tuple(bundle.symbols)
        n = len(self.symbols)
        policy = bundle.members[0].policy
        self.tf_ms = bundle.timeframe_minutes * MINUTE_MS
        self.lag = settings.sim.execution_lag_bars
        self.execution = Execution.of(settings.sim, self.tf_ms, policy.leverage, bundle.band)
        self.beta_window = policy.beta_window if policy.neutral == "beta" else 0
        window = max(self.execution.vol_window if self.execution.vol_target else 0, self.beta_window, 1)
        self.history: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=window)  # (returns, have) per slot
        self.tails = {s: deque(maxlen=bundle.min_bars) for s in self.symbols}
        self.previous: dict[str, Bar | None] = dict.fromkeys(self.symbols)
        self.run_length = dict.fromkeys(self.symbols, 0)
        self.targets: deque[np.ndarray] = deque(maxlen=self.lag + 1)  # the book's targets of the last L + 1 slots
        self.held = np.zeros(n)
        self.members = [MemberBook(BookState.flat(n), np.zeros(n)) for _ in bundle.members]
        self.last_time: int | None = None
        self.equity = self.peak = 1.0
        self.slots = 0
        self.nets: deque[float] = deque(maxlen=settings.sharpe_window)

    def meta(self, symbol: str) -> dict[str, str]:
        return {
            "bundle": self.bundle.fingerprint(),
            "members": json.dumps([m.name for m in self.bundle.members]),
            "symbols": json.dumps(list(self.symbols)),
            "symbol": symbol,
            "timeframe_minutes": str(self.bundle.timeframe_minutes),
            "sim": json.dumps(asdict(self.settings.sim), sort_keys=True),
        }

    def start(self, model: str) -> None:
        """Claim every asset's ledger for this book; a ledger that holds rows is refused (no resuming yet)."""
        for symbol, ledger in self.ledgers.items():
            if ledger.claim(self.meta(symbol)):
                raise LedgerError(
                    f"ledger {ledger.url} already holds the book's rows for {symbol}: resuming a book is not "
                    "supported; give new ledgers"
                )
            ledger.log_events([_event(None, "start", f"new ledger of {symbol} in the book of {model}")])

    def run(self, feed: Iterable[Slot]) -> None:
        for slot in feed:
            self.on_slot(slot)

    def on_slot(self, slot: Slot) -> None:
        """Validate, book and decide one slot (one row per asset with a bar), or refuse it."""
        t = int(slot.open_time)
        if self.last_time is not None and t <= self.last_time:
            for symbol in slot.bars:
                self._refuse(symbol, t, "out_of_order", f"slot {_iso(t)} after {_iso(self.last_time)}: refused")
            return
        bars: dict[str, Bar] = {}
        for symbol, bar in slot.bars.items():
            if symbol not in self.ledgers:
                log.warning("a bar of %s, which the book does not trade, ignored", symbol)
                continue
            problem = "open_time differs from the slot's" if bar.open_time != t else bar_problem(bar, self.tf_ms)
            if problem:
                self._refuse(symbol, t, "invalid", f"bar {_iso(t)} refused: {problem}: {bar}")
            else:
                bars[symbol] = bar
        if not bars:
            return
        parts, have, missing = self._book(t, bars)
        self._advance_tails(bars, missing)
        decision = self._decide(t, have)
        self._write(t, bars, parts, decision, missing)
        self.last_time = t

    def _book(self, t: int, bars: dict[str, Bar]) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, int]]:
        """Price the slot: the held weights, each asset's return since its previous bar and its funding. Also
        returns which assets have a bar and, for those, the bars missing before it (-1: its first bar)."""
        n = len(self.symbols)
        held = self.targets[0] if len(self.targets) == self.lag + 1 else np.zeros(n)
        returns, funding, have = np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool)
        missing = {}
        for a, symbol in enumerate(self.symbols):
            bar, before = bars.get(symbol), self.previous[symbol]
            if bar is None:
                continue
            have[a] = True
            missing[symbol] = -1 if before is None else (bar.open_time - before.open_time) // self.tf_ms - 1
            if missing[symbol] == 0:
                returns[a] = float(bar_returns(np.array([before.close, bar.close]))[0])
            funding[a] = bar.funding_rate
        sim = simulate(
            torch.from_numpy(held)[None, None],
            torch.from_numpy(returns)[None, None],
            torch.from_numpy(funding)[None, None],
            self.settings.sim,
            prev_position=torch.from_numpy(self.held)[None],
            exact=True,
        )
        parts = {"position": held, **{k: getattr(sim, k)[0, 0].numpy() for k in ("gross", "commission", "funding")}}
        parts |= {"trade": sim.trades[0, 0].numpy(), "net": sim.net[0, 0].numpy()}
        net = float(parts["net"].sum())
        self.held, self.equity = held, self.equity * (1.0 + net)
        self.peak = max(self.peak, self.equity)
        self.nets.append(net)
        self.history.append((returns, have))
        return parts, have, missing

    def _advance_tails(self, bars: dict[str, Bar], missing: dict[str, int]) -> None:
        for symbol, bar in bars.items():
            if missing[symbol]:
                self.tails[symbol].clear()  # a new run of consecutive bars: the features warm up again
                self.run_length[symbol] = 0
            self.tails[symbol].append({k: getattr(bar, k) for k in BAR_FIELDS})
            self.run_length[symbol] += 1
            self.previous[symbol] = bar

    def _decide(self, t: int, have: np.ndarray) -> dict[str, Any]:
        """The book's target from this close (held from the last decision between decision slots)."""
        n = len(self.symbols)
        present = np.array([have[a] and len(self.tails[s]) == self.bundle.min_bars for a, s in enumerate(self.symbols)])
        last = self.targets[-1] if self.targets else np.zeros(n)
        out: dict[str, Any] = {"present": present, "raw": np.full(n, np.nan), "gate": np.full(n, np.nan)}
        if not decision_mask(np.array([t]), self.tf_ms, self.execution.period)[0]:
            self.targets.append(last)
            return out | {"decided": False}
        windows = self._windows(present)
        beta = self._betas() if self.beta_window else None
        raws, gates, executed = [], [], []
        for member, state in zip(self.bundle.members, self.members, strict=True):
            policy = member.policy
            logits = slot_logits(policy, windows, present) if present.any() else [[0.0, 0.0]] * n
            raw, gate = book_step(policy, logits, present, state.recursion, beta)
            for a in range(n):
                state.hysteresis[a] = apply_hysteresis(raw[a : a + 1], member.hysteresis, state.hysteresis[a])[0]
            book = rebook(
                state.hysteresis[None], raw[None], policy.neutral, None if beta is None else beta[None], policy.leverage
            )
            raws.append(raw)
            gates.append(gate)
            executed.append(book[0])
        decision = np.mean(executed, axis=0)  # the members' mean, as the fold's ensemble
        returns = np.array([r for r, _ in self.history]) if self.execution.vol_target else None
        target = self.execution.step(last, decision, returns)
        self.targets.append(target)
        with np.errstate(invalid="ignore"):
            return out | {"decided": True, "raw": np.mean(raws, axis=0), "gate": np.mean(gates, axis=0)}

    def _windows(self, present: np.ndarray) -> np.ndarray:
        """(A, ctx, F) the last ``ctx`` feature rows of each present asset's tail (NaN for the others)."""
        policy = self.bundle.members[0].policy
        out = np.full((len(self.symbols), policy.context, policy.n_features), np.nan, dtype=np.float32)
        for a in np.flatnonzero(present):
            symbol = self.symbols[a]
            tail = pd.DataFrame(list(self.tails[symbol]))
            bars = tail.drop(columns=["funding_rate"] + (["num_trades"] if tail["num_trades"].isna().any() else []))
            bars["open_time"] = from_ms(bars["open_time"].to_numpy())
            where = f"the book's tail of {symbol}"
            series = feature_series(
                bars, bars, self.bundle.features, self.bundle.timeframe_minutes, policy.n_features, where
            )
            out[a] = series.features[-policy.context :]
        return out

    def _betas(self) -> np.ndarray:
        """(A,) each asset's beta over the book's last ``beta_window`` slots (0 until that many exist, as the
        engine's NaN betas are read)."""
        if len(self.history) < self.beta_window:
            return np.zeros(len(self.symbols))
        returns = np.array([r for r, _ in self.history])[-self.beta_window :]
        have = np.array([h for _, h in self.history])[-self.beta_window :]
        return market_betas(np.log1p(returns)[None], have[None])[0]

    def _write(
        self, t: int, bars: dict[str, Bar], parts: dict[str, np.ndarray], decision: dict[str, Any], missing: dict
    ) -> None:
        target = self.targets[-1]
        for a, symbol in enumerate(self.symbols):
            bar = bars.get(symbol)
            if bar is None:
                continue
            before = max(0, missing[symbol])
            mode = "warmup" if not decision["present"][a] else ("trading" if decision["decided"] else "holding")
            raw, gate = decision["raw"][a], decision["gate"][a]
            row = {k: getattr(bar, k) for k in BAR_FIELDS}
            row |= {
                "missing_before": before,
                "mode": mode,
                "raw_position": None if not np.isfinite(raw) else float(raw),
                "gate": None if not np.isfinite(gate) else float(gate),
                "executed": float(target[a]),
                **{k: float(parts[k][a]) for k in ("position", *PARTS)},
                "equity": self.equity,
                "run_length": self.run_length[symbol],
                "state": json.dumps(
                    [[m.recursion.prev[a], m.recursion.delta[a], float(m.hysteresis[a])] for m in self.members]
                ),
            }
            events = []
            if before:
                events.append(_event(t, "gap", f"{before} bar(s) of {symbol} missing before {_iso(t)}"))
            self.ledgers[symbol].append(row, events)
        self.slots += 1
        if self.sink is not None:
            row = {"equity": self.equity, "position": float(self.held.sum())}
            window = np.fromiter(self.nets, dtype=np.float64)
            rolling = sharpe(window, self.settings.ann) if len(window) > 1 else None
            self.sink.bar(self.slots, row, self.equity / self.peak - 1.0, rolling)

    def _refuse(self, symbol: str, t: int, kind: str, detail: str) -> None:
        log.warning("%s: %s", kind, detail)
        if symbol in self.ledgers:
            self.ledgers[symbol].log_events([_event(t, kind, detail)])
        if self.sink is not None:
            self.sink.event(kind, detail)


def ledger_books(ledgers: Mapping[str, Ledger]) -> dict[str, pd.DataFrame]:
    """Each asset's ledger rows."""
    return {symbol: ledger.book() for symbol, ledger in ledgers.items()}


def compare_book(books: Mapping[str, pd.DataFrame], record: Mapping[str, pd.DataFrame]) -> dict[str, float]:
    """Largest absolute difference per asset and column between the ledgers and a book's record on the record's
    slots: ``record[symbol]`` has ``time`` and any of position, trade, gross, commission, funding, net."""
    out = {}
    for symbol, expected in record.items():
        times = to_ms(pd.to_datetime(expected["time"], utc=True))
        rows = books[symbol].set_index("open_time").reindex(times)
        if rows["close"].isna().any():
            raise DataError(f"the ledger of {symbol} lacks {int(rows['close'].isna().sum())} of the record's slots")
        for column in [c for c in ("position", *PARTS) if c in expected.columns]:
            out[f"{symbol}/{column}"] = float(np.max(np.abs(rows[column].to_numpy() - expected[column].to_numpy())))
    return out


def _iso(ms: int | None) -> str:
    return "-" if ms is None else pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M")


def _event(open_time: int | None, kind: str, detail: str) -> dict[str, Any]:
    wall = pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds")
    return {"open_time": open_time, "kind": kind, "detail": detail, "wall_time": wall}
