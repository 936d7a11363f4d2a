"""Walk-forward: the one evaluation engine (val during training, threshold search, test, backtest, baselines).

Shapes: N bars of a :class:`~diffquant.data.splits.Series` (quarter plus warm-up), T = N - start quarter bars,
ctx = the policy's context, F features.

Two steps, kept apart so that threshold search re-runs only the cheap one:

1. :func:`policy_decisions` runs the network once over every window of the series (batched backbone, then the
   scalar state recursion ``head.scan_numpy``): one raw decision per bar, at its close.
2. :func:`walk_forward` maps executed decisions (after hysteresis, or a baseline's constant positions) through the
   execution layer (``diffquant.sim.execution``: the decision cadence, the volatility target, the no-trade band) to
   the positions held per quarter bar and prices them with the one simulator, ``simulate(..., exact=True)``.

A policy decides every ``model.decision_every`` bars (the clock's decision bars, ``decision_mask``) and its recursion
steps from decision to decision; its raw decision is held between them. The execution's defaults (every bar, no
band, no target) leave today's engine as it was, bit for bit.

Time convention (docs/design_notes.md): the decision of bar k is executed at the close of bar k + L and held during
bar k + L + 1, L = ``sim.execution_lag_bars``. Row j of the record (every quarter bar j >= start) therefore holds
the executed decision of bar j - 1 - L and earns r_j = close_j / close_{j-1} - 1, zero across a gap. The book is
flat before the quarter, so the first row pays the entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from diffquant.config import SimConfig
from diffquant.data.contracts import from_ms
from diffquant.model.band import band_width
from diffquant.model.forecaster import Forecaster
from diffquant.model.policy import PolicyNetwork, sliding_windows
from diffquant.sim.execution import Execution, decision_mask, hold_between
from diffquant.sim.simulator import bar_returns, held_positions, simulate

RECORD_COLUMNS = (
    "time",
    "close",
    "raw_position",
    "gate",
    "position",
    "trade",
    "gross",
    "commission",
    "funding",
    "net",
    "equity",
)


class SeriesLike(Protocol):
    """The attributes of ``diffquant.data.splits.Series`` this module reads."""

    features: np.ndarray  # (N, F) float32
    close: np.ndarray  # (N,) float64
    funding: np.ndarray  # (N,) float64, rate charged during each bar
    open_time: np.ndarray  # (N,) int64 Unix ms
    start: int  # index of the quarter's first bar
    timeframe_ms: int

    @property
    def gap_before(self) -> np.ndarray: ...  # (N,) bool


@dataclass(frozen=True)
class Decisions:
    """The policy's output at the close of every bar; NaN where no full window exists yet (k < ctx - 1). At a
    decision cadence, each bar holds its last decision bar's output (NaN before the first)."""

    raw: np.ndarray  # (N,) float64 position in (-1, 1)
    gate: np.ndarray  # (N,) float64 gate in (0, 1)
    band: float | None = None  # the policy's learned no-trade band width (None: sim.band)


@dataclass(frozen=True)
class WalkForwardResult:
    """``record``: one row per quarter bar (columns ``RECORD_COLUMNS``); ``rebalances``: its rows with a trade."""

    record: pd.DataFrame
    rebalances: pd.DataFrame  # time, from, to, commission


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _empty_decisions(n: int, band: float | None = None) -> Decisions:
    return Decisions(raw=np.full(n, np.nan), gate=np.full(n, np.nan), band=band)


def encode_windows(
    model: PolicyNetwork | Forecaster, series: SeriesLike, batch_size: int, rows: np.ndarray | None = None
) -> np.ndarray:
    """``model.encode_channel_major`` of every window of ``series`` (bars ctx-1 .. N-1; or those ending at
    ``rows``), float64 on the CPU.

    Eval mode under ``inference_mode`` on the model's device; the model's train/eval mode is restored.
    ``batch_size`` bounds memory: a batch of windows is batch_size x F x ctx floats after the z-score.
    """
    was_training = model.training
    if was_training:  # a no-op eval() still walks every module: ~2 ms, a paper trader's decision encodes one window
        model.eval()
    try:
        with torch.inference_mode():
            features = torch.as_tensor(series.features, dtype=torch.float32, device=_model_device(model))
            windows = sliding_windows(features[None], model.context)[0]  # (N - ctx + 1, F, ctx), a view
            if rows is not None:
                windows = windows[torch.as_tensor(rows - (model.context - 1), device=windows.device)]
            out = torch.cat(
                [model.encode_channel_major(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]
            )
    finally:
        if was_training:
            model.train()
    return out.double().cpu().numpy()


def decision_bars(model: PolicyNetwork, series: SeriesLike) -> np.ndarray:
    """(N,) bool: the bars at whose close ``model`` decides: the clock's decision bars of its cadence
    (``decision_mask``) from its first full window (bar ctx - 1) on."""
    decide = decision_mask(series.open_time, series.timeframe_ms, model.decision_every)
    decide[: model.context - 1] = False
    return decide


def policy_decisions(model: PolicyNetwork, series: SeriesLike, batch_size: int = 2048) -> Decisions:
    """Raw decisions for every bar of ``series``, the fast way (one backbone pass per ``batch_size`` windows).

    The recursion starts flat at the first decision (bar ctx - 1, or at a cadence the first decision bar from it
    on) and steps from decision to decision, exactly as :func:`policy_decisions_reference`.
    """
    n, ctx = len(series.close), model.context
    out = _empty_decisions(n, band_width(model))
    if n < ctx:
        return out
    if model.decision_every == 1:
        logits = _series_logits(model, series) if model.series else encode_windows(model, series, batch_size)
        out.raw[ctx - 1 :], out.gate[ctx - 1 :] = model.head.scan_numpy(logits)
        return out
    decide = decision_bars(model, series)
    rows = np.flatnonzero(decide)
    if model.series:
        logits = _series_logits(model, series)[rows - (ctx - 1)]
    else:
        logits = encode_windows(model, series, batch_size, rows)
    raw, gate = np.full(n, np.nan), np.full(n, np.nan)
    raw[rows], gate[rows] = model.head.scan_numpy(logits)
    return Decisions(hold_between(raw, decide), hold_between(gate, decide), out.band)


def _series_logits(model: PolicyNetwork, series: SeriesLike) -> np.ndarray:
    """A series-path policy's logits of bars ctx-1 .. N-1 from one causal pass over the whole series (each bar sees
    every bar before it, back to the series' first), float64 on the CPU; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            features = torch.as_tensor(series.features, dtype=torch.float32, device=_model_device(model))
            logits = model.encode_series(features[None])[0, model.context - 1 :]
    finally:
        model.train(was_training)
    return logits.double().cpu().numpy()


def forecast_decisions(model: Forecaster, series: SeriesLike, batch_size: int = 2048) -> Decisions:
    """The MSE proxy's raw positions tanh(forecast / scale) for every bar; it has no gate (NaN)."""
    n, ctx = len(series.close), model.context
    out = _empty_decisions(n)
    if n >= ctx:
        forecast = encode_windows(model, series, batch_size)
        out.raw[ctx - 1 :] = np.tanh(forecast / float(model.scale))
    return out


DECISIONS_OF = {"policy": policy_decisions, "proxy": forecast_decisions}  # model kind -> its decisions on a series


def policy_decisions_reference(model: PolicyNetwork, series: SeriesLike) -> Decisions:
    """The plain per-bar loop (upstream's way): one ``model(window, prev_pos, prev_delta)`` call per decision bar
    (on the series path, one pass over the bars up to it), the last decision held between.

    Kept as the obviously-correct reference that :func:`policy_decisions` must equal (tests, benchmark).
    """
    n, ctx = len(series.close), model.context
    out = _empty_decisions(n, band_width(model))
    decide = decision_bars(model, series) if n >= ctx else np.zeros(n, dtype=bool)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            features = torch.as_tensor(series.features, dtype=torch.float32, device=_model_device(model))
            prev = features.new_zeros(1)
            delta = features.new_zeros(1)
            for k in range(ctx - 1, n):
                if not decide[k]:  # between decisions the last one is held
                    out.raw[k], out.gate[k] = out.raw[k - 1], out.gate[k - 1]
                    continue
                if model.series:  # the series path: bars 0..k, recomputed for every bar
                    pos, gate = model.head.step(model.encode_series(features[None, : k + 1])[:, -1], prev, delta)
                else:
                    pos, gate = model(features[k - ctx + 1 : k + 1][None], prev, delta)  # window of bars k-ctx+1..k
                out.raw[k], out.gate[k] = pos.item(), gate.item()
                delta, prev = pos - prev, pos
    finally:
        model.train(was_training)
    return out


def constant_positions(series: SeriesLike, value: float) -> np.ndarray:
    """Executed decisions of a constant baseline (N,): 1.0 = buy-and-hold, 0.0 = flat, -1.0 = always short."""
    return np.full(len(series.close), float(value))


Execute = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # (decisions, bars) -> held, src


def held_in_quarter(
    executed: np.ndarray,
    start: int,
    lag: int,
    execute: Execute | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Executed decisions (N,) or a book's (N, A) -> what each quarter bar holds (T, ...) and the bar whose decision
    that is (T,; -1: none, the book is flat); refuses a held NaN (a warm-up too short for the lag).

    ``execute(decisions, bars)``: the execution layer (``Execution.held``) on the decisions the quarter's bars would
    hold under the lag alone, taken at the closes of ``bars``; it returns what they hold and whose decision."""
    n = len(executed)
    if not 1 + lag <= start < n:
        raise ValueError(
            f"series.start = {start} with {n} bars: the quarter's first bar needs the close before it and the "
            f"decision of bar start - 1 - sim.execution_lag_bars ({lag}); rebuild the split with this lag"
        )
    first = start - 1 - lag  # the bar whose decision the quarter's first bar holds
    held = held_positions(torch.from_numpy(executed[first : n - 1]), lag, time_axis=0)[lag:].numpy()  # (T, ...)
    src = np.arange(start, n) - 1 - lag  # (T,) the bar whose decision each quarter bar holds (for the record)
    if execute is not None:
        held, src = execute(held, src)
    finite = np.isfinite(held).reshape(len(held), -1).all(axis=1)
    if not finite.all():
        missing = int(src[~finite][0])
        raise ValueError(f"no executed decision at bar {missing}, which quarter bar {missing + 1 + lag} must hold")
    return held, src


def engine_execution(
    open_time: np.ndarray,
    timeframe_ms: int,
    sim_cfg: SimConfig,
    returns: np.ndarray,
    leverage: float | None = None,
    band: float | None = None,
) -> Execute | None:
    """``held_in_quarter``'s ``execute`` for a series' bars (``open_time`` (N,), one asset's or a book's clock)
    under ``sim_cfg``: None when it would change nothing (a decision every bar, no band, no volatility target), so
    today's engine runs as it did. ``returns`` (N,) or (N, A): what each bar earns, for the volatility estimate;
    ``leverage``: a book's cap after the volatility scale; ``band``: a learned width in place of ``sim.band``."""
    execution = Execution.of(sim_cfg, timeframe_ms, leverage, band)
    if execution.period == 1 and not execution.band and not execution.vol_target:
        return None
    return lambda decisions, bars: execution.held(decisions, bars, open_time, timeframe_ms, returns)


def bar_earnings(series: SeriesLike) -> np.ndarray:
    """(N,) what each bar of ``series`` earns per unit held: r_j = close_j / close_{j-1} - 1, 0 at the first bar and
    across a gap (nothing is earned across missing bars)."""
    returns = np.r_[0.0, bar_returns(np.asarray(series.close, dtype=np.float64))]
    returns[np.asarray(series.gap_before)] = 0.0
    return returns


def walk_forward(
    series: SeriesLike,
    executed: np.ndarray,
    sim_cfg: SimConfig,
    raw: np.ndarray | None = None,
    gate: np.ndarray | None = None,
    band: float | None = None,
) -> WalkForwardResult:
    """Price executed decisions over the quarter bars of ``series``.

    ``executed`` (N,) is the position decided at the close of each bar (after hysteresis, or a baseline's);
    ``raw`` and ``gate`` (N,) are only recorded, in the row whose position that bar's decision set. Entries of
    ``executed`` that no quarter bar holds are ignored (at a cadence, those of bars between decision bars); a NaN in
    one that is held is refused, since it means the series' warm-up is too short for the lag. ``band``: a policy's
    learned band width in place of ``sim.band``. PnL is float64 throughout.
    """
    n, start, lag = len(series.close), int(series.start), sim_cfg.execution_lag_bars
    executed = np.asarray(executed, dtype=np.float64)
    if executed.shape != (n,):
        raise ValueError(f"executed decisions have shape {executed.shape}; the series has {n} bars")
    earned = bar_earnings(series)
    execute = engine_execution(series.open_time, series.timeframe_ms, sim_cfg, earned, band=band)
    held, src = held_in_quarter(executed, start, lag, execute)
    close = np.asarray(series.close, dtype=np.float64)
    returns = earned[start:]  # (T,) r_j = close_j / close_{j-1} - 1, 0 across a gap
    sim = simulate(
        torch.from_numpy(held)[None],
        torch.from_numpy(returns)[None],
        torch.from_numpy(np.asarray(series.funding, dtype=np.float64)[start:])[None],
        sim_cfg,
        exact=True,
    )
    net = sim.net[0].numpy()
    time = from_ms(np.asarray(series.open_time)[start:])

    def recorded(values: np.ndarray | None, name: str) -> np.ndarray:
        if values is None:
            return np.full(len(src), np.nan)
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (n,):
            raise ValueError(f"{name} has shape {values.shape}; the series has {n} bars")
        return np.where(src >= 0, values[np.maximum(src, 0)], np.nan)

    record = pd.DataFrame(
        {
            "time": time,
            "close": close[start:],
            "raw_position": recorded(raw, "raw"),
            "gate": recorded(gate, "gate"),
            "position": held,
            "trade": sim.trades[0].numpy(),
            "gross": sim.gross[0].numpy(),
            "commission": sim.commission[0].numpy(),
            "funding": sim.funding[0].numpy(),
            "net": net,
            "equity": np.cumprod(1.0 + net),
        }
    )
    before = np.r_[0.0, held[:-1]]  # the book is flat before the quarter
    traded = held != before
    rebalances = pd.DataFrame(
        {
            "time": time[traded].reset_index(drop=True),
            "from": before[traded],
            "to": held[traded],
            "commission": record["commission"].to_numpy()[traded],
        }
    )
    return WalkForwardResult(record=record, rebalances=rebalances)
