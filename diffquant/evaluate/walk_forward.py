"""Walk-forward: the one evaluation engine (val during training, threshold search, test, backtest, baselines).

Shapes: N bars of a :class:`~diffquant.data.splits.Series` (quarter plus warm-up), T = N - start quarter bars,
ctx = the policy's context, F features.

Two steps, kept apart so that threshold search re-runs only the cheap one:

1. :func:`policy_decisions` runs the network once over every window of the series (batched backbone, then the
   scalar state recursion ``head.scan_numpy``): one raw decision per bar, at its close.
2. :func:`walk_forward` maps executed decisions (after hysteresis, or a baseline's constant positions) to the
   positions held per quarter bar and prices them with the one simulator, ``simulate(..., exact=True)``.

Time convention (docs/design_notes.md): the decision of bar k is executed at the close of bar k + L and held during
bar k + L + 1, L = ``sim.execution_lag_bars``. Row j of the record (every quarter bar j >= start) therefore holds
the executed decision of bar j - 1 - L and earns r_j = close_j / close_{j-1} - 1, zero across a gap. The book is
flat before the quarter, so the first row pays the entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from diffquant.config import SimConfig
from diffquant.data.contracts import from_ms
from diffquant.model.forecaster import Forecaster
from diffquant.model.policy import PolicyNetwork, sliding_windows
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

    @property
    def gap_before(self) -> np.ndarray: ...  # (N,) bool


@dataclass(frozen=True)
class Decisions:
    """The policy's output at the close of every bar; NaN where no full window exists yet (k < ctx - 1)."""

    raw: np.ndarray  # (N,) float64 position in (-1, 1)
    gate: np.ndarray  # (N,) float64 gate in (0, 1)


@dataclass(frozen=True)
class WalkForwardResult:
    """``record``: one row per quarter bar (columns ``RECORD_COLUMNS``); ``rebalances``: its rows with a trade."""

    record: pd.DataFrame
    rebalances: pd.DataFrame  # time, from, to, commission


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _empty_decisions(n: int) -> Decisions:
    return Decisions(raw=np.full(n, np.nan), gate=np.full(n, np.nan))


def encode_windows(model: PolicyNetwork | Forecaster, series: SeriesLike, batch_size: int) -> np.ndarray:
    """``model.encode_channel_major`` of every window of ``series`` (bars ctx-1 .. N-1), float64 on the CPU.

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
            out = torch.cat(
                [model.encode_channel_major(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]
            )
    finally:
        if was_training:
            model.train()
    return out.double().cpu().numpy()


def policy_decisions(model: PolicyNetwork, series: SeriesLike, batch_size: int = 2048) -> Decisions:
    """Raw decisions for every bar of ``series``, the fast way (one backbone pass per ``batch_size`` windows).

    The recursion starts flat at the first decision (bar ctx - 1), exactly as :func:`policy_decisions_reference`.
    """
    n, ctx = len(series.close), model.context
    out = _empty_decisions(n)
    if n < ctx:
        return out
    logits = _series_logits(model, series) if model.series else encode_windows(model, series, batch_size)
    out.raw[ctx - 1 :], out.gate[ctx - 1 :] = model.head.scan_numpy(logits)
    return out


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
    """The plain per-bar loop (upstream's way): one ``model(window, prev_pos, prev_delta)`` call per bar (on the
    series path, one pass over the bars up to it).

    Kept as the obviously-correct reference that :func:`policy_decisions` must equal (tests, benchmark).
    """
    n, ctx = len(series.close), model.context
    out = _empty_decisions(n)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            features = torch.as_tensor(series.features, dtype=torch.float32, device=_model_device(model))
            prev = features.new_zeros(1)
            delta = features.new_zeros(1)
            for k in range(ctx - 1, n):
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


def held_in_quarter(executed: np.ndarray, start: int, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Executed decisions (N,) or a book's (N, A) -> what each quarter bar holds (T, ...) and the bar whose decision
    that is (T,); refuses a held NaN (a warm-up too short for the lag)."""
    n = len(executed)
    if not 1 + lag <= start < n:
        raise ValueError(
            f"series.start = {start} with {n} bars: the quarter's first bar needs the close before it and the "
            f"decision of bar start - 1 - sim.execution_lag_bars ({lag}); rebuild the split with this lag"
        )
    first = start - 1 - lag  # the bar whose decision the quarter's first bar holds
    held = held_positions(torch.from_numpy(executed[first : n - 1]), lag, time_axis=0)[lag:].numpy()  # (T, ...)
    src = np.arange(start, n) - 1 - lag  # (T,) the bar whose decision each quarter bar holds (for the record)
    finite = np.isfinite(held).reshape(len(held), -1).all(axis=1)
    if not finite.all():
        missing = int(src[~finite][0])
        raise ValueError(f"no executed decision at bar {missing}, which quarter bar {missing + 1 + lag} must hold")
    return held, src


def walk_forward(
    series: SeriesLike,
    executed: np.ndarray,
    sim_cfg: SimConfig,
    raw: np.ndarray | None = None,
    gate: np.ndarray | None = None,
) -> WalkForwardResult:
    """Price executed decisions over the quarter bars of ``series``.

    ``executed`` (N,) is the position decided at the close of each bar (after hysteresis, or a baseline's);
    ``raw`` and ``gate`` (N,) are only recorded, in the row whose position that bar's decision set. Entries of
    ``executed`` that no quarter bar holds are ignored; a NaN in one that is held is refused, since it means the
    series' warm-up is too short for the lag. PnL is float64 throughout.
    """
    n, start, lag = len(series.close), int(series.start), sim_cfg.execution_lag_bars
    executed = np.asarray(executed, dtype=np.float64)
    if executed.shape != (n,):
        raise ValueError(f"executed decisions have shape {executed.shape}; the series has {n} bars")
    held, src = held_in_quarter(executed, start, lag)
    close = np.asarray(series.close, dtype=np.float64)
    returns = bar_returns(close[start - 1 :])  # (T,) r_j = close_j / close_{j-1} - 1
    returns[np.asarray(series.gap_before)[start:]] = 0.0  # nothing is earned across missing bars
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
        return values[src]

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
