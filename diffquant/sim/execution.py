"""Execution: the one layer between a policy's decisions and the positions the simulator prices.

Training (``train.episodes``), the walk-forward engines (``evaluate.walk_forward``, ``evaluate.book``), the
baselines and the paper traders pass decisions through these functions, so a held position is made one way
(docs/execution.md; the choices are in docs/design_notes.md, "Execution").

Shapes: K decisions (B episodes x H decisions in training), A assets; one asset's decisions are (K,) or (B, H),
a book's (K, A) or (B, H, A).

- **Cadence.** Decisions are taken at the closes that are multiples of ``period`` bars from the epoch
  (``decision_mask``; ``sim.rebalance_every``, or the funding interval with ``sim.rebalance_at: funding``) and held
  between (``hold_between``). Period 1 is every bar.
- **Per decision**, in this order (``execute``): the decision (a book's weights after its neutrality and cap:
  ``book_weights``); times the volatility scale ``vol_scale`` (``sim.vol_target``); a book capped to its leverage
  again; then the no-trade band ``band_step`` (``sim.band``), from a flat book. Every default leaves a decision as
  it is, bit for bit.
- **Causal estimates.** The volatility and the betas at a decision bar k come from the log returns of the bars
  k - W + 1 .. k (``trailing``): data known at k's close. They are computed per window, never from running sums,
  so a window gives the same bits wherever the data it is cut from starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from diffquant.config import SimConfig
from diffquant.sim.simulator import bar_returns

DAYS_PER_YEAR = 365  # the volatility target's calendar: a 24/7 market (eval.days_per_year only reports)
Neutral = Literal["none", "dollar", "beta"]


# --- cadence ---------------------------------------------------------------------------------------------------


def decision_mask(open_time: np.ndarray, timeframe_ms: int, period: int) -> np.ndarray:
    """(N,) bool: the bars whose close is a multiple of ``period`` bars from the epoch, where decisions are taken
    (with 1-hour bars and period 8: the closes at 00:00, 08:00 and 16:00 UTC, the funding stamps)."""
    close = np.asarray(open_time, dtype=np.int64) + int(timeframe_ms)
    return close % (int(period) * int(timeframe_ms)) == 0


def last_decision(decide: np.ndarray) -> np.ndarray:
    """(N,) int: the last decision bar at or before each bar, -1 before the first."""
    return np.maximum.accumulate(np.where(decide, np.arange(len(decide)), -1))


def hold_between(values: np.ndarray, decide: np.ndarray, before: float = np.nan) -> np.ndarray:
    """``values`` (N, ...) as held from each decision bar to the next: each bar takes its last decision bar's value,
    ``before`` until the first."""
    src = last_decision(decide)
    out = np.asarray(values)[np.maximum(src, 0)].astype(np.float64, copy=True)
    out[src < 0] = before
    return out


# --- causal estimates ------------------------------------------------------------------------------------------


def log_returns(close: np.ndarray, gap_before: np.ndarray | None = None, time_axis: int = 0) -> np.ndarray:
    """log(c_j / c_{j-1}) per bar along ``time_axis`` (0 at the first bar and across a gap, as the engine earns
    nothing there), as log1p of the simple return ``bar_returns`` makes, so every caller gets the same bits."""
    simple = np.moveaxis(bar_returns(np.asarray(close, dtype=np.float64), time_axis), time_axis, 0)
    out = np.concatenate([np.zeros((1, *simple.shape[1:])), np.log1p(simple)])
    if gap_before is not None:
        out[np.asarray(gap_before, dtype=bool)] = 0.0
    return np.moveaxis(out, 0, time_axis)


def trailing(values: np.ndarray, rows: np.ndarray, window: int) -> np.ndarray:
    """The ``window`` values ending at each of ``rows`` (K,): (K, window, ...) from ``values`` (N, ...); a row whose
    window would reach bar 0 (it has no return) is refused."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and rows.min() < window:
        raise ValueError(f"a {window}-bar estimate at bar {rows.min()} needs {window} returns before it")
    return np.asarray(values)[rows[:, None] + np.arange(1 - window, 1)]


def second_moment(windows: np.ndarray) -> np.ndarray:
    """Mean of l l' over each window: (K, W) -> (K,) for one asset, (K, W, A) -> (K, A, A) for a book. No mean is
    subtracted (RiskMetrics' choice: over a few days of bars the mean is noise)."""
    if windows.ndim == 2:
        return np.mean(windows * windows, axis=1)
    return np.einsum("kwa,kwb->kab", windows, windows) / windows.shape[1]


def market_betas(windows: np.ndarray, have: np.ndarray) -> np.ndarray:
    """(K, W, A) log returns and (K, W, A) which assets have a bar -> (K, A) each asset's beta against the
    equal-weight return of the assets with a bar: sum_j l_ij m_j / sum_j m_j^2 (no mean, as ``second_moment``);
    0 where the market never moved."""
    count = have.sum(axis=2)
    market = np.where(count > 0, (windows * have).sum(axis=2) / np.maximum(count, 1), 0.0)  # (K, W)
    energy = (market * market).sum(axis=1)  # (K,)
    cross = np.einsum("kwa,kw->ka", windows, market)
    return np.where(energy[:, None] > 0, cross / np.where(energy > 0, energy, 1.0)[:, None], 0.0)


def per_bar_target(annual: float, timeframe_minutes: int) -> float:
    """An annualised volatility as the per-bar one it means (365 days of 24 hours)."""
    return annual / math.sqrt(DAYS_PER_YEAR * 1440 / timeframe_minutes)


def risk_units(moment: np.ndarray, annual: float, timeframe_minutes: int) -> np.ndarray:
    """Second moments in units of the target's per-bar variance (what ``vol_scale`` reads): of order 1, so float32
    keeps them, and a mirrored market (log returns negated) has the same."""
    return moment / per_bar_target(annual, timeframe_minutes) ** 2


# --- the book's weights, the scale, the band ------------------------------------------------------------------


def only_present(x: Tensor, present: Tensor | None) -> Tensor:
    """``x`` with absent assets' entries exactly 0; ``torch.where``, not ``x * present``, so a NaN there is not read."""
    return x if present is None else torch.where(present, x, 0.0)


def cap_gross(raw: Tensor, leverage: float, present: Tensor | None = None) -> Tensor:
    """Raw positions (..., A) -> weights with sum_i |w_i| <= leverage; absent assets (``present`` False) get 0.

    w = raw * L / max(L, sum_i |raw_i|): a book within the limit is held as it is (so one asset is untouched), a
    larger one is scaled down as a whole, keeping the assets' proportions. The scale divides by at least L, and
    |raw_i| < 1, so values and gradients stay finite at any logits; its kink at sum |raw| = L is a relu's kink.
    """
    raw = only_present(raw, present)
    return raw * (leverage / raw.abs().sum(dim=-1, keepdim=True).clamp_min(leverage))


def neutralise(raw: Tensor, neutral: Neutral, present: Tensor | None = None, beta: Tensor | None = None) -> Tensor:
    """Raw weights (..., A) projected onto the neutral books (absent assets stay 0): ``dollar`` subtracts the
    present assets' mean (the weights then sum to 0); ``beta`` subtracts (w . b / b . b) b, b the present assets'
    betas (``market_betas``), so sum_i w_i b_i = 0 (a book whose betas are all 0 is left as it is). Orthogonal
    projections: a neutral book is left as it is, and the gross cap after it (a scaling) keeps it neutral."""
    raw = only_present(raw, present)
    if neutral == "none":
        return raw
    if neutral == "dollar":
        count = raw.new_tensor(raw.shape[-1]) if present is None else present.sum(-1, keepdim=True).clamp_min(1)
        return only_present(raw - raw.sum(-1, keepdim=True) / count, present)
    if beta is None:
        raise ValueError("a beta-neutral book needs each asset's beta at each decision")
    b = only_present(beta, present)
    energy = (b * b).sum(-1, keepdim=True)
    return raw - b * ((raw * b).sum(-1, keepdim=True) / torch.where(energy > 0, energy, 1.0))


def book_weights(
    raw: Tensor, leverage: float, neutral: Neutral = "none", present: Tensor | None = None, beta: Tensor | None = None
) -> Tensor:
    """A portfolio's raw positions (..., A) -> the weights it holds: neutral (``model.portfolio.neutral``), then
    within the leverage (``cap_gross``)."""
    return cap_gross(neutralise(raw, neutral, present, beta), leverage, present)


def vol_scale(weights: Tensor, risk: Tensor, max_scale: float) -> Tensor:
    """The factor that brings a decision to the volatility target, capped: min(max_scale, 1 / sigma).

    ``risk``: second moments in target units (``risk_units``). One asset (``weights`` and ``risk`` of one shape):
    sigma^2 is its risk, whatever the position, so a full position has the target's volatility. A book (weights
    (..., A), risk (..., A, A)): sigma^2 = u' R u for the book's direction u = w / sum_i |w_i|, so a book at full
    gross has the target's volatility and a smaller one that fraction of it. Differentiable (the variance is
    clamped before the root, so a flat window gives the cap with a zero gradient).
    """
    if weights.dim() == risk.dim():
        variance = risk
    else:
        gross = weights.abs().sum(-1)
        quad = (weights.unsqueeze(-2) @ risk @ weights.unsqueeze(-1))[..., 0, 0]
        variance = torch.where(gross > 0, quad / torch.where(gross > 0, gross, 1.0).square(), 0.0)
    return variance.clamp_min(max_scale**-2).rsqrt()


def band_step(prev: Tensor, target: Tensor, width: float | Tensor, book: bool) -> Tensor:
    """One decision through the no-trade band: the held position moves towards ``target`` only by what exceeds
    ``width``: held = prev + c (target - prev), c = relu(1 - width / |target - prev|) with |.| the sum over a book's
    assets (its turnover). So inside the band nothing is traded, and outside exactly |target - prev| - width is;
    for a book c is one factor, so a dollar-neutral book stays neutral and one within the leverage stays within it
    (the held book is a mix of two such books). Exact, and differentiable except at the band's edge (a relu's kink)
    and at no change; ``width`` > 0 (a band of 0 is no band: callers skip it)."""
    delta = target - prev
    size = delta.abs().sum(-1) if book else delta.abs()
    keep = torch.relu(1.0 - width / torch.maximum(size, torch.as_tensor(width, dtype=size.dtype)))
    return prev + (keep.unsqueeze(-1) if book else keep) * delta


def band_path(targets: Tensor, width: float | Tensor, book: bool) -> Tensor:
    """``band_step`` over a sequence of decisions from a flat book: (B, H) or (B, H, A) -> the same shape."""
    held, prev = [], torch.zeros_like(targets[:, 0])
    for t in range(targets.shape[1]):
        prev = band_step(prev, targets[:, t], width, book)
        held.append(prev)
    return torch.stack(held, 1)


def band_path_numpy(targets: np.ndarray, width: float, start: np.ndarray | None = None) -> np.ndarray:
    """``band_path`` of one series (K,) or a book's (K, A), float64, as plain float arithmetic (the engine's path:
    thousands of decisions), from a flat book or ``start``; it must equal the torch path (tested)."""
    targets = np.asarray(targets, dtype=np.float64)
    book = targets.ndim == 2
    rows = targets.reshape(len(targets), -1).tolist()
    out = np.empty((len(rows), targets.size // max(len(rows), 1)))
    prev = [0.0] * out.shape[1] if start is None else np.asarray(start, dtype=np.float64).reshape(-1).tolist()
    for k, target in enumerate(rows):
        delta = [x - p for x, p in zip(target, prev, strict=True)]
        sizes = [sum(abs(d) for d in delta)] if book else [abs(d) for d in delta]
        keeps = [max(0.0, 1.0 - width / max(size, width)) for size in sizes]
        prev = [p + (keeps[0] if book else keeps[i]) * d for i, (p, d) in enumerate(zip(prev, delta, strict=True))]
        out[k] = prev
    return out.reshape(targets.shape)


# --- training's path --------------------------------------------------------------------------------------------


def execute_decisions(
    decisions: Tensor,
    sim: SimConfig,
    *,
    period: int = 1,
    risk: Tensor | None = None,
    band: float | Tensor = 0.0,
    leverage: float | None = None,
) -> Tensor:
    """Episodes' decisions (B, H) or a book's (B, H, A) -> the positions targeted during each of the H x ``period``
    bars after them (before the execution lag: ``held_positions``), differentiably: the volatility scale (``risk``
    per decision, ``sim.vol_target``), a book capped to ``leverage`` again, the band of width ``band`` from a flat
    book, each decision held ``period`` bars. With every default the decisions come back as they are."""
    x = decisions
    if sim.vol_target:
        if risk is None:
            raise ValueError("sim.vol_target is set: the episodes need each decision's risk (EpisodeExecution)")
        x = x * _expand(vol_scale(x, risk, sim.vol_max_scale), x)
        if leverage is not None and x.dim() == 3:
            x = cap_gross(x, leverage)
    if isinstance(band, Tensor) or band > 0:
        x = band_path(x, band, book=x.dim() == 3)
    return x.repeat_interleave(period, dim=1) if period > 1 else x


# --- the engine's path -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Execution:
    """What the walk-forward engine does between a quarter's decisions and the positions its bars hold."""

    period: int  # bars between decisions
    band: float  # the no-trade band's width (0: none)
    vol_max_scale: float
    vol_window: int
    vol_target: float  # annual (0: none)
    timeframe_minutes: int
    leverage: float | None = None  # a book's gross cap after the volatility scale

    @classmethod
    def of(
        cls, sim: SimConfig, timeframe_ms: int, leverage: float | None = None, band: float | None = None
    ) -> Execution:
        """The execution ``sim`` configures on bars of ``timeframe_ms``; ``band``: a policy's learned width in
        place of ``sim.band``."""
        minutes = int(timeframe_ms) // 60_000
        if sim.vol_target and sim.vol_window < 2:
            raise ValueError(
                f"sim.vol_window is {sim.vol_window}: give the bars of the volatility estimate (Config.validate "
                "makes 0 window.context - 1)"
            )
        width = sim.band if band is None else float(band)
        period = sim.decision_period(minutes)
        return cls(period, width, sim.vol_max_scale, sim.vol_window, sim.vol_target, minutes, leverage)

    def held(
        self,
        decisions: np.ndarray,
        bars: np.ndarray,
        open_time: np.ndarray,
        timeframe_ms: int,
        returns: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decisions (T,) or (T, A) taken at the closes of ``bars`` (T,) (consecutive indices into the series,
        ``open_time`` (N,)) -> what is held from each of those bars on (T, ...) and the bar whose decision that is
        (T,; -1: flat before the first decision). ``returns`` (N,) or (N, A): the simple returns each bar earns (0
        across gaps), for the volatility estimate. The book is flat before the span."""
        decide = decision_mask(open_time[bars], timeframe_ms, self.period)
        rows = np.flatnonzero(decide)
        chosen = np.asarray(decisions, dtype=np.float64)[rows]  # (K, ...)
        if self.vol_target:
            if returns is None:
                raise ValueError("a volatility target needs the bars' returns")
            windows = trailing(np.asarray(returns, dtype=np.float64), bars[rows], self.vol_window)
            chosen = self.scaled(chosen, windows)
        if self.band:
            chosen = band_path_numpy(chosen, self.band)
        src = last_decision(decide)
        held = np.zeros((len(bars), *chosen.shape[1:]))
        have = src >= 0
        held[have] = chosen[np.searchsorted(rows, src[have])]
        return held, np.where(have, bars[np.maximum(src, 0)], -1)

    def scaled(self, decisions: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """Decisions (K,) or (K, A) times their volatility scale, a book capped again; ``windows`` (K, W[, A]): the
        simple returns of the ``vol_window`` bars up to each decision (``trailing``)."""
        moment = risk_units(second_moment(np.log1p(windows)), self.vol_target, self.timeframe_minutes)
        w = torch.from_numpy(np.asarray(decisions, dtype=np.float64))
        out = w * _expand(vol_scale(w, torch.from_numpy(moment), self.vol_max_scale), w)
        if self.leverage is not None and out.dim() == 2:  # a scale above 1 may take a book past its cap
            out = cap_gross(out, self.leverage)
        return out.numpy()

    def step(self, prev: np.ndarray, decision: np.ndarray, returns: np.ndarray | None) -> np.ndarray:
        """One decision through the layer, after ``prev`` (what the last decision targeted): the paper traders'
        path, the arithmetic of ``held`` at one decision bar. ``returns`` (W,) or (W, A): the simple returns of the
        ``vol_window`` bars up to the decision (read only with a volatility target)."""
        chosen = np.asarray(decision, dtype=np.float64)[None]
        if self.vol_target and chosen.any():  # a flat decision stays flat at any scale (before a full window)
            if returns is None or len(returns) < self.vol_window:
                raise ValueError(f"a volatility target needs the returns of the last {self.vol_window} bars")
            chosen = self.scaled(chosen, np.asarray(returns, dtype=np.float64)[None, -self.vol_window :])
        if self.band:
            chosen = band_path_numpy(chosen, self.band, prev)
        return chosen[0]


def _expand(scale: Tensor, weights: Tensor) -> Tensor:
    """A per-decision scale (K,) against weights (K,) or (K, A)."""
    return scale if scale.dim() == weights.dim() else scale.unsqueeze(-1)
