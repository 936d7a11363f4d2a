"""Walk-forward of a book of A assets: the one engine (``held_in_quarter`` + ``simulate(..., exact=True)``) on weights.

Shapes: N clock slots (every open time at which any asset has a bar: the union of the assets' series), A assets,
T = N - start quarter slots, ctx the policy's context, F features, D the encoder's width.

Each asset keeps its own rows: its decision at a slot comes from its own last ctx bars (exactly the window the
single-asset engine reads), its return is earned on its own consecutive bars (zero across its gaps) and its funding
is its own. At a slot where an asset has no bar, or fewer than ctx bars so far, it is absent: its weight there is 0
(no padded bars) and it is no attention key. Decisions are taken at the close of a slot from bars up to it, of every
asset; the weight decided at slot k is held during slot k + 1 + lag, as for one asset. With A = 1 every number of the
record is the single-asset engine's (tested bar for bar).

The book's execution is the single asset's (``diffquant.sim.execution``): decisions at the clock's decision slots
(``model.decision_every``), its weights neutral (``model.portfolio.neutral``, betas from the slots before each
decision) and capped, scaled to the volatility target and capped again, then the no-trade band on the whole book.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from diffquant.config import Hysteresis, SimConfig
from diffquant.data.contracts import from_ms
from diffquant.evaluate.hysteresis import apply_hysteresis
from diffquant.evaluate.metrics import compute_metrics
from diffquant.evaluate.scoring import Scorer
from diffquant.evaluate.walk_forward import SeriesLike, engine_execution, held_in_quarter
from diffquant.model.band import band_width
from diffquant.model.policy import backbone_features, sliding_windows
from diffquant.model.portfolio import PortfolioPolicy
from diffquant.sim.execution import (
    Neutral,
    book_weights,
    cap_gross,
    decision_mask,
    hold_between,
    market_betas,
    trailing,
)
from diffquant.sim.simulator import bar_returns, simulate


@dataclass(frozen=True, eq=False)
class BookSeries:
    """The assets' evaluation series (same quarter) on one clock."""

    assets: tuple[SeriesLike, ...]
    symbols: tuple[str, ...]
    open_time: np.ndarray  # (N,) int64 Unix ms: the clock
    rows: np.ndarray  # (N, A) int: each asset's row at each slot, -1 where it has no bar
    start: int  # the quarter's first slot

    @classmethod
    def of(cls, series: Sequence[SeriesLike], symbols: Sequence[str] | None = None) -> BookSeries:
        """Series of one quarter, one per asset (each with its own warm-up) -> the book; a quarter's first slot is
        the earliest first quarter bar of any asset (every warm-up bar lies before it)."""
        clock = np.unique(np.concatenate([np.asarray(s.open_time) for s in series]))
        rows = np.full((len(clock), len(series)), -1)
        for a, s in enumerate(series):
            rows[np.searchsorted(clock, s.open_time), a] = np.arange(len(s.open_time))
        first = min(int(s.open_time[s.start]) for s in series)
        names = tuple(symbols) if symbols is not None else tuple(str(a) for a in range(len(series)))
        return cls(tuple(series), names, clock, rows, int(np.searchsorted(clock, first)))

    def per_slot(self, values: Sequence[np.ndarray], fill: float = 0.0) -> np.ndarray:
        """Per-asset row values -> (N, A) on the clock, ``fill`` where an asset has no bar."""
        out = np.full(self.rows.shape, fill)
        for a, v in enumerate(values):
            have = self.rows[:, a] >= 0
            out[have, a] = np.asarray(v, dtype=np.float64)[self.rows[have, a]]
        return out

    @property
    def returns(self) -> np.ndarray:
        """(N, A) the return each asset earns during each slot: over its own previous bar, 0 across its gaps."""
        own = []
        for s in self.assets:
            r = np.r_[0.0, bar_returns(np.asarray(s.close, dtype=np.float64))]
            r[np.asarray(s.gap_before)] = 0.0
            own.append(r)
        return self.per_slot(own)

    @property
    def funding(self) -> np.ndarray:
        """(N, A) the funding rate charged during each slot (0 where the asset has no bar)."""
        return self.per_slot([s.funding for s in self.assets])

    @property
    def timeframe_ms(self) -> int:
        return int(self.assets[0].timeframe_ms)

    def betas(self, window: int) -> np.ndarray:
        """(N, A) each asset's beta against the equal-weight log return of the assets with a bar, over the
        ``window`` slots up to each slot (``market_betas``: causal); NaN at the first ``window`` slots."""
        logs, have = np.log1p(self.returns), self.rows >= 0
        rows = np.arange(window, len(self.open_time))
        out = np.full(self.rows.shape, np.nan)
        out[rows] = market_betas(trailing(logs, rows, window), trailing(have, rows, window))
        return out


@dataclass(frozen=True)
class BookDecisions:
    """The portfolio's weights at the close of every slot (N, A), NaN where the asset is absent; at a cadence each
    slot holds its last decision slot's (NaN before the first). ``neutral`` and ``beta`` are what its weights were
    made neutral with (``executed_book`` makes them so again after hysteresis); ``band``: its learned band width."""

    raw: np.ndarray
    gate: np.ndarray
    neutral: Neutral = "none"
    beta: np.ndarray | None = None  # (N, A), a beta-neutral book's betas at each decision slot, held between
    band: float | None = None


@dataclass(frozen=True)
class BookResult:
    """``record``: one row per quarter slot, the book's totals and each asset's weight (``w_<symbol>``);
    ``assets``: per asset its weight, trade, gross, commission, funding and net per quarter slot."""

    record: pd.DataFrame
    assets: dict[str, pd.DataFrame]


def _encoded(model: PortfolioPolicy, book: BookSeries, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every asset's windows through the shared encoder, on the clock: features (N, A, D) and present (N, A)."""
    ctx, dev = model.context, next(model.parameters()).device
    feats = torch.zeros(len(book.open_time), len(book.assets), model.backbone.out_dim, device=dev)
    present = torch.zeros(feats.shape[:2], dtype=torch.bool, device=dev)
    for a, s in enumerate(book.assets):
        if len(s.open_time) < ctx:
            continue
        x = torch.as_tensor(s.features, dtype=torch.float32, device=dev)
        windows = sliding_windows(x[None], ctx)[0]  # (n - ctx + 1, F, ctx)
        slots = torch.as_tensor(np.flatnonzero(book.rows[:, a] >= ctx - 1), device=dev)
        feats[slots, a] = torch.cat(
            [backbone_features(model.backbone, windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]
        )
        present[slots, a] = True
    return feats, present


def book_decisions(model: PortfolioPolicy, book: BookSeries, batch_size: int = 2048) -> BookDecisions:
    """The fast way: the encoder batched over each asset's windows, attention batched over the slots, the head over
    the present (slot, asset) pairs in slot order; then the weights' recursion in plain floats.

    With one asset the head sees exactly the single-asset engine's batches, so its logits are the same bits.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            feats, present = _encoded(model, book, batch_size)
            chunks = range(0, len(feats), batch_size)
            mixed = torch.cat([model.mix(feats[i : i + batch_size], present[i : i + batch_size]) for i in chunks])
            mixed = mixed[present]  # (P, D), slot-major
            logits = torch.zeros(*present.shape, 2, dtype=torch.float64)
            logits[present.cpu()] = (
                torch.cat([model.head(mixed[i : i + batch_size]) for i in range(0, len(mixed), batch_size)])
                .double()
                .cpu()
            )
    finally:
        model.train(was_training)
    beta = book.betas(model.beta_window) if model.neutral == "beta" else None
    return _scan(model, logits.numpy(), present.cpu().numpy(), decision_slots(model, book), beta)


def decision_slots(model: PortfolioPolicy, book: BookSeries) -> np.ndarray:
    """(N,) bool: the slots at whose close the portfolio decides (its cadence on the clock)."""
    return decision_mask(book.open_time, book.timeframe_ms, model.decision_every)


def _neutral_floats(pos: list[float], have: list[int], neutral: Neutral, beta: np.ndarray | None) -> None:
    """``sim.execution.neutralise`` in place on plain floats (the present assets ``have``)."""
    if neutral == "dollar" and have:
        mean = sum(pos[a] for a in have) / len(have)
        for a in have:
            pos[a] -= mean
    elif neutral == "beta" and beta is not None:
        b = {a: float(beta[a]) for a in have}
        energy = sum(v * v for v in b.values())
        if energy > 0:
            c = sum(pos[a] * v for a, v in b.items()) / energy
            for a, v in b.items():
                pos[a] -= c * v


def _scan(
    model: PortfolioPolicy, logits: np.ndarray, present: np.ndarray, decide: np.ndarray, beta: np.ndarray | None
) -> BookDecisions:
    """``PolicyHead.step`` per asset and ``book_weights`` per decision slot, as plain float arithmetic (the order of
    ``PolicyHead.scan_numpy``, so one asset gives its numbers exactly), each decision held to the next; logits
    (N, A, 2), present (N, A), decide (N,), beta (N, A) or None."""
    n, n_assets = present.shape
    rows = logits.tolist()
    raw, gates = np.full((n, n_assets), np.nan), np.full((n, n_assets), np.nan)
    state = BookState.flat(n_assets)
    for t in range(n):
        if not decide[t]:
            if t:
                raw[t], gates[t] = raw[t - 1], gates[t - 1]
            continue
        raw[t], gates[t] = book_step(model, rows[t], present[t], state, None if beta is None else beta[t])
    held_beta = None if beta is None else hold_between(beta, decide)
    return BookDecisions(raw, gates, model.neutral, held_beta, band_width(model))


@dataclass
class BookState:
    """The portfolio's recursion state between decisions: each asset's last weight and its change."""

    prev: list[float]
    delta: list[float]

    @classmethod
    def flat(cls, n_assets: int) -> BookState:
        return cls([0.0] * n_assets, [0.0] * n_assets)


def book_step(
    model: PortfolioPolicy, logits: list[list[float]], present: np.ndarray, state: BookState, beta: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """One decision of the book: ``PolicyHead.step`` per present asset from ``state`` (updated in place), then
    ``book_weights`` in plain floats; logits (A, 2) as lists, present (A,), beta (A,) or None. Returns the raw
    weights and gates (A,), NaN where absent. The walk-forward's ``_scan`` and the book's paper trader step here."""
    head, lev = model.head, model.leverage
    (a_dp, a_dd), (a_gp, a_gd) = head.state.weight.detach().double().cpu().tolist()
    inv_d, inv_g = 1.0 / head.tau_dir, 1.0 / head.tau_gate
    prev, delta = state.prev, state.delta
    n_assets = len(prev)
    raw, gates = np.full(n_assets, np.nan), np.full(n_assets, np.nan)
    pos = [0.0] * n_assets
    have = np.flatnonzero(present).tolist()
    for a in have:
        d, g = logits[a]
        gate = 1.0 / (1.0 + math.exp(-(g + a_gp * prev[a] + a_gd * delta[a]) * inv_g))
        pos[a] = math.tanh((d + a_dp * prev[a] + a_dd * delta[a]) * inv_d) * gate
        gates[a] = gate
    _neutral_floats(pos, have, model.neutral, beta)
    scale = lev / max(lev, sum(abs(p) for p in pos))  # cap_gross, in floats
    for a in range(n_assets):
        w = pos[a] * scale
        if present[a]:
            raw[a] = w
        delta[a], prev[a] = w - prev[a], w
    return raw, gates


def slot_logits(model: PortfolioPolicy, windows: np.ndarray, present: np.ndarray) -> list[list[float]]:
    """The head's logits (A, 2) at one slot from each present asset's window (A, ctx, F) (an absent asset's is never
    read): the encoder, the attention over the present assets and the head, as ``book_decisions`` batches them (a
    batch of one slot may round the float32 products differently in the last bits)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            dev = next(model.parameters()).device
            have = torch.as_tensor(np.asarray(present, dtype=bool), device=dev)
            x = torch.as_tensor(np.asarray(windows, dtype=np.float32)[present], device=dev).transpose(
                1, 2
            )  # (P, F, ctx)
            feats = torch.zeros(1, len(present), model.backbone.out_dim, device=dev)
            feats[0, have] = backbone_features(model.backbone, x)
            mixed = model.mix(feats, have[None])[0, have]
            logits = torch.zeros(len(present), 2, dtype=torch.float64)
            logits[have.cpu()] = model.head(mixed).double().cpu()
    finally:
        model.train(was_training)
    return logits.tolist()


def book_decisions_reference(model: PortfolioPolicy, book: BookSeries) -> BookDecisions:
    """The plain per-slot loop: one ``model(windows, prev, delta, present)`` call per slot on every asset's last
    ctx bars (an absent asset's window is NaN, never read). :func:`book_decisions` must equal it."""
    ctx, n_feat = model.context, model.n_features
    n, n_assets = book.rows.shape
    raw, gates = np.full((n, n_assets), np.nan), np.full((n, n_assets), np.nan)
    decide = decision_slots(model, book)
    beta = book.betas(model.beta_window) if model.neutral == "beta" else None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            prev = torch.zeros(1, n_assets)
            delta = torch.zeros(1, n_assets)
            for t in range(n):
                if not decide[t]:
                    if t:
                        raw[t], gates[t] = raw[t - 1], gates[t - 1]
                    continue
                windows = torch.full((1, n_assets, ctx, n_feat), float("nan"))
                present = torch.as_tensor(book.rows[t] >= ctx - 1)[None]
                for a in np.flatnonzero(present[0].numpy()).tolist():
                    r = int(book.rows[t, a])
                    windows[0, a] = torch.as_tensor(book.assets[a].features[r - ctx + 1 : r + 1], dtype=torch.float32)
                b = None if beta is None else torch.as_tensor(np.nan_to_num(beta[t]), dtype=torch.float32)[None]
                w, gate = model(windows, prev, delta, present, b)
                have = present[0].numpy()
                raw[t, have], gates[t, have] = w[0, have].numpy(), gate[0, have].numpy()
                delta, prev = w - prev, w
    finally:
        model.train(was_training)
    held_beta = None if beta is None else hold_between(beta, decide)
    return BookDecisions(raw, gates, model.neutral, held_beta, band_width(model))


def executed_book(decisions: BookDecisions, hysteresis: Hysteresis, leverage: float) -> np.ndarray:
    """Hysteresis per asset on the raw weights (an absent asset is flat), then the book made neutral and capped to
    the leverage again (a hysteresis target can be a larger weight than the one the cap last allowed, and filtering
    each asset on its own undoes the book's neutrality)."""
    held = np.stack([apply_hysteresis(col, hysteresis) for col in decisions.raw.T], axis=1)
    return rebook(held, decisions.raw, decisions.neutral, decisions.beta, leverage)


def rebook(held: np.ndarray, raw: np.ndarray, neutral: Neutral, beta: np.ndarray | None, leverage: float) -> np.ndarray:
    """Weights after hysteresis (..., A) made the book again: neutral over the assets with a raw weight (``raw``
    finite) and within the leverage (``book_weights``)."""
    if neutral == "none":
        return cap_gross(torch.from_numpy(held), leverage).numpy()
    present = torch.from_numpy(np.isfinite(raw))
    b = None if beta is None else torch.from_numpy(np.nan_to_num(beta))
    return book_weights(torch.from_numpy(held), leverage, neutral, present, b).numpy()


def walk_forward_book(
    book: BookSeries,
    executed: np.ndarray,
    sim_cfg: SimConfig,
    gate: np.ndarray | None = None,
    leverage: float | None = None,
    band: float | None = None,
) -> BookResult:
    """Price executed weights (N, A) over the quarter slots of ``book`` through the execution layer; ``gate``
    (N, A) is only recorded (the mean over the assets that have one). ``leverage`` refuses a book beyond it (the
    simulator's check) and caps the book after a volatility scale; ``band``: a learned width in place of
    ``sim.band``. Float64."""
    executed = np.asarray(executed, dtype=np.float64)
    if executed.shape != book.rows.shape:
        raise ValueError(f"executed weights have shape {executed.shape}; the book has {book.rows.shape}")
    start, returns = book.start, book.returns
    execute = engine_execution(book.open_time, book.timeframe_ms, sim_cfg, returns, leverage, band)
    held, src = held_in_quarter(executed, start, sim_cfg.execution_lag_bars, execute)  # (T, A)
    sim = simulate(
        torch.from_numpy(held)[None],
        torch.from_numpy(returns[start:])[None],
        torch.from_numpy(book.funding[start:])[None],
        sim_cfg,
        exact=True,
        leverage=leverage,
    )
    parts = {k: getattr(sim, k)[0].numpy() for k in ("trades", "gross", "commission", "funding", "net")}  # (T, A)
    net = parts["net"].sum(axis=1)
    with np.errstate(invalid="ignore"):  # a slot where no asset has a gate
        gates = np.full(len(src), np.nan)
        if gate is not None:
            gates[src >= 0] = np.nanmean(np.asarray(gate)[src[src >= 0]], axis=1)
    record = pd.DataFrame(
        {
            "time": from_ms(book.open_time[start:]),
            "gate": gates,
            "position": held.sum(axis=1),  # net exposure
            "gross_exposure": np.abs(held).sum(axis=1),
            "trade": np.abs(parts["trades"]).sum(axis=1),  # turnover
            **{k: parts[k].sum(axis=1) for k in ("gross", "commission", "funding")},
            "net": net,
            "equity": np.cumprod(1.0 + net),
            **{f"w_{s}": held[:, a] for a, s in enumerate(book.symbols)},
        }
    )
    assets = {
        s: pd.DataFrame({"weight": held[:, a], **{k: v[:, a] for k, v in parts.items()}})
        for a, s in enumerate(book.symbols)
    }
    return BookResult(record, assets)


def book_metrics(scorer: Scorer, model: PortfolioPolicy, book: BookSeries, hysteresis: Hysteresis) -> dict[str, float]:
    """The portfolio's walk-forward metrics on ``book`` (a val check): decisions, hysteresis per asset, the book."""
    decisions = book_decisions(model, book)
    executed = executed_book(decisions, hysteresis, model.leverage)
    result = walk_forward_book(book, executed, scorer.sim, decisions.gate, model.leverage, decisions.band)
    return compute_metrics(result.record, scorer.timeframe_minutes, scorer.days_per_year)
