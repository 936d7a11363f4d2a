"""Train the MSE proxy for every seed of ``train.seeds``: the train-proxy stage's one entry point.

Each seed's forecaster is fitted by ``fit_task`` (same loop, checkpoints and resuming as the policy), then both its
``best.pt`` and ``final.pt`` get the position scale of the weights they hold (the spread of their train forecasts).
Each seed is a unit of the grid runner (:class:`ProxyWork`), reporting through the same ``SeedHooks`` as the
policy's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffquant.compute.units import SeedHooks, Unit
from diffquant.config import Config
from diffquant.data.splits import Series
from diffquant.model.forecaster import Forecaster
from diffquant.train import checkpoint, layout
from diffquant.train.proxy import (
    ForecastSet,
    ForecastTask,
    LowestMse,
    calibrate,
    forecast_quality,
    forecast_set,
    horizon_log_returns,
)
from diffquant.train.resume import ResumeSpec
from diffquant.train.trainer import (
    TrainResult,
    finished_history,
    fit_task,
    resolve_device,
    seed_everything,
)


@dataclass(frozen=True)
class ProxyOutcome:
    """One seed's forecaster: the trainer's result and the quality of its calibrated best checkpoint."""

    seed: int
    result: TrainResult
    seconds: float
    quality: dict[str, float]  # best_epoch, forecast_scale, val_mse, val_ic, val_hit_rate
    files: dict[str, Path] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        return self.quality

    def run_metrics(self) -> dict[str, float]:
        return {**self.quality, "train_seconds": self.seconds}


def target_scale(cfg: Config, train: Sequence[Series]) -> float:
    """The spread of the next-horizon log returns on the train bars (of every asset): the forecasts' unit."""
    w = cfg.window
    returns = [horizon_log_returns(s, w.context, w.horizon, cfg.sim.execution_lag_bars)[1] for s in train]
    return float(np.std(np.concatenate(returns)))


def resume_spec(cfg: Config, feature_names: list[str], scale: float, seed: int) -> ResumeSpec:
    training = {
        "train": cfg.train.identity(),
        "horizon": cfg.window.horizon,
        "lag": cfg.sim.execution_lag_bars,
        "target_scale": scale,
        "batch_windows": cfg.baselines.proxy_batch_windows,
    }
    return ResumeSpec(checkpoint.policy_spec(cfg.model, feature_names, cfg.window.context), seed, training)


@dataclass(frozen=True)
class ProxyWork:
    """A proxy unit: one seed's forecaster fitted on the pooled ``train`` series into ``folder``, selected on
    ``val``, both checkpoints calibrated and rewritten."""

    unit: Unit
    cfg: Config
    train: tuple[Series, ...]
    val: tuple[Series, ...]
    scale: float
    folder: Path

    @property
    def spec(self) -> ResumeSpec:
        return resume_spec(self.cfg, self.train[0].feature_names, self.scale, self.unit.seed)

    def finished_epochs(self) -> list[dict[str, Any]]:
        return finished_history(self.folder, self.spec)

    def run(self, on_epoch: Callable[[dict[str, Any]], None], progress: bool) -> ProxyOutcome:
        cfg, seed, t0 = self.cfg, self.unit.seed, time.perf_counter()
        ctx, horizon, lag = cfg.window.context, cfg.window.horizon, cfg.sim.execution_lag_bars
        device = resolve_device(cfg.train.device)
        train_set, val_set = (
            ForecastSet.concat([forecast_set(s, ctx, horizon, lag, self.scale) for s in series]).to(device)
            for series in (self.train, self.val)
        )
        seed_everything(seed)
        model = Forecaster(cfg.model, len(self.train[0].feature_names), ctx).to(device)
        task = ForecastTask(train_set, cfg.baselines.proxy_batch_windows)
        result = fit_task(
            model,
            task,
            lambda m: forecast_quality(m, val_set),
            LowestMse(),
            cfg.train,
            seed,
            self.folder,
            self.spec,
            on_epoch=on_epoch,
            progress=progress,
        )
        quality = {
            name: _calibrate_file(model, result.checkpoints[name], train_set, val_set) for name in ("best", "final")
        }
        summary = {"best_epoch": result.best_epoch or 0, **quality["best"]}
        return ProxyOutcome(seed, result, time.perf_counter() - t0, summary)


def proxy_works(
    cfg: Config, train: Sequence[Series], val: Sequence[Series], out: Path, group: str = ""
) -> list[ProxyWork]:
    """One unit per seed of ``train.seeds``, into ``<out>/seed_<s>/``."""
    scale = target_scale(cfg, train)
    return [
        ProxyWork(Unit("proxy", s, group), cfg, tuple(train), tuple(val), scale, layout.seed_dir(out, s))
        for s in cfg.train.seeds
    ]


def prepare_proxies(works: Sequence[ProxyWork], out: Path, hooks: SeedHooks) -> None:
    """Before a group's seeds train: tell the hooks whether an interrupted run is continued; drop stale seeds."""
    hooks.begin(any(w.finished_epochs() for w in works))
    layout.prune(out, [w.unit.seed for w in works])


def _calibrate_file(model: Forecaster, path: Path, train_set: ForecastSet, val_set: ForecastSet) -> dict[str, float]:
    """Give the checkpoint at ``path`` the position scale of the weights it holds; its val quality."""
    state = checkpoint.load(path)
    model.load_state_dict(state["model_state"])
    quality = {
        "forecast_scale": calibrate(model, train_set),
        **{f"val_{k}": v for k, v in forecast_quality(model, val_set).items()},
    }
    checkpoint.save(path, {**state, "model_state": model.state_dict()})
    return quality
