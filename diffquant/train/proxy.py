"""Training data and task of the MSE proxy (``diffquant.model.forecaster``): no Sharpe, no simulator, no costs.

Target of the decision at bar k: the log return the position it sets would be exposed to over the next
``horizon`` bars, log(close[k + L + H] / close[k + L]) with L = ``sim.execution_lag_bars`` (decided at close k,
traded at close k + L), divided by the spread of those returns on the train bars. Bars whose window or target
span crosses a gap in the data are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from diffquant.evaluate.walk_forward import SeriesLike
from diffquant.model.forecaster import Forecaster
from diffquant.model.policy import sliding_windows
from diffquant.train.trainer import LossMeter


@dataclass(frozen=True)
class ForecastSet:
    """Windows of one continuous series with their forecast targets."""

    windows: Tensor  # (N - ctx + 1, F, ctx) every window of the series, a view
    rows: Tensor  # (M,) int64 the window of each sample (its decision bar k = row + ctx - 1)
    target: Tensor  # (M,) float32 standardised next-horizon log return

    def __len__(self) -> int:
        return len(self.rows)

    def to(self, device: torch.device) -> ForecastSet:
        return ForecastSet(self.windows.to(device), self.rows.to(device), self.target.to(device))

    @staticmethod
    def concat(sets: list[ForecastSet]) -> ForecastSet:
        """Several series' sets as one (a pooled universe); a single set is returned as it is."""
        if len(sets) == 1:
            return sets[0]
        offsets = np.cumsum([0] + [len(s.windows) for s in sets[:-1]])
        return ForecastSet(
            torch.cat([s.windows for s in sets]),
            torch.cat([s.rows + int(o) for s, o in zip(sets, offsets, strict=True)]),
            torch.cat([s.target for s in sets]),
        )


def horizon_log_returns(series: SeriesLike, context: int, horizon: int, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Decision bars k with a full gap-free window and target, and their next-horizon log returns (float64)."""
    n = len(series.close)
    k = np.arange(context - 1, n - lag - horizon)
    gaps = np.cumsum(series.gap_before)
    k = k[gaps[k + lag + horizon] == gaps[k - context + 1]]
    log_close = np.log(np.asarray(series.close, dtype=np.float64))
    return k, log_close[k + lag + horizon] - log_close[k + lag]


def forecast_set(series: SeriesLike, context: int, horizon: int, lag: int, scale: float) -> ForecastSet:
    """Every decision of ``series`` with a target, the target divided by ``scale`` (the train spread)."""
    k, log_return = horizon_log_returns(series, context, horizon, lag)
    if len(k) == 0:
        raise ValueError(f"no bar of a {len(series.close)}-bar series has a {context}-bar window and a target")
    features = torch.as_tensor(series.features, dtype=torch.float32)
    return ForecastSet(
        sliding_windows(features[None], context)[0],
        torch.as_tensor(k - (context - 1)),
        torch.as_tensor(log_return / scale, dtype=torch.float32),
    )


class ForecastTask:
    """Least squares on the standardised next-horizon return; the trainer's ``EpochTask`` for the proxy."""

    def __init__(self, data: ForecastSet, batch_size: int) -> None:
        self.data = data
        self.n_items, self.batch_size = len(data), min(batch_size, len(data))
        self._losses = LossMeter()

    def loss(self, model: nn.Module, idx: Tensor) -> Tensor:
        windows = self.data.windows[self.data.rows[idx]]
        loss = torch.mean((model.encode_channel_major(windows) - self.data.target[idx]) ** 2)
        self._losses.add(loss)
        return loss

    def summary(self) -> dict[str, float]:
        return {"train_loss": self._losses.pop_mean()}


@torch.inference_mode()
def predict(model: Forecaster, data: ForecastSet, batch_size: int = 4096) -> Tensor:
    """Forecasts of every sample in eval mode (restores the model's mode)."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat(
            [
                model.encode_channel_major(data.windows[data.rows[i : i + batch_size]])
                for i in range(0, len(data), batch_size)
            ]
        )
    finally:
        model.train(was_training)


def forecast_quality(model: Forecaster, data: ForecastSet) -> dict[str, float]:
    """MSE of the standardised target, the information coefficient (Pearson) and the hit rate of the sign."""
    f = predict(model, data).double()
    y = data.target.double()
    return {
        "mse": float(torch.mean((f - y) ** 2)),
        "ic": float(torch.corrcoef(torch.stack([f, y]))[0, 1]) if f.std() > 0 else 0.0,
        "hit_rate": float(torch.mean(((f > 0) == (y > 0)).double())),
    }


class LowestMse:
    """The proxy's best-checkpoint rule (a ``trainer.Selection``): the lowest val MSE; every check qualifies."""

    def score(self, val: dict[str, float]) -> float:
        return -val["mse"]

    def fallback(self, val: dict[str, float]) -> float:
        return -val["mse"]


def calibrate(model: Forecaster, train: ForecastSet) -> float:
    """Set ``model.scale`` to the spread of its train forecasts (a floor keeps a constant model finite)."""
    scale = max(float(predict(model, train).double().std()), 1e-6)
    model.scale.fill_(scale)
    return scale
