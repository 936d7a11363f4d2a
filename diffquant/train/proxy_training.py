"""Train the MSE proxy for every seed of ``train.seeds``: the train-proxy stage's one entry point.

Each seed's forecaster is fitted by ``fit_task`` (same loop, checkpoints and resuming as the policy), then both its
``best.pt`` and ``final.pt`` get the position scale of the weights they hold (the spread of their train forecasts).
Reports through the same ``SeedHooks`` as the policy's training.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffquant.config import Config
from diffquant.data.splits import Series
from diffquant.model.forecaster import Forecaster
from diffquant.train import checkpoint, layout
from diffquant.train.policy_training import SeedHooks
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
    completed_epochs,
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
        "train": dataclasses.asdict(cfg.train),
        "horizon": cfg.window.horizon,
        "lag": cfg.sim.execution_lag_bars,
        "target_scale": scale,
        "batch_windows": cfg.baselines.proxy_batch_windows,
    }
    return ResumeSpec(checkpoint.policy_spec(cfg.model, feature_names, cfg.window.context), seed, training)


def train_proxies(
    cfg: Config, train: Sequence[Series], val: Sequence[Series], out: Path, hooks: SeedHooks
) -> dict[int, ProxyOutcome]:
    """Every seed's forecaster into ``<out>/seed_<s>/``, fitted on the train series of every asset given (pooled);
    both checkpoints calibrated and rewritten."""
    ctx, horizon, lag = cfg.window.context, cfg.window.horizon, cfg.sim.execution_lag_bars
    scale = target_scale(cfg, train)
    device = resolve_device(cfg.train.device)
    train_set, val_set = (
        ForecastSet.concat([forecast_set(s, ctx, horizon, lag, scale) for s in series]).to(device)
        for series in (train, val)
    )
    names = train[0].feature_names
    specs = {s: resume_spec(cfg, names, scale, s) for s in cfg.train.seeds}
    hooks.begin(any(completed_epochs(layout.seed_dir(out, s), specs[s]) for s in cfg.train.seeds))
    layout.prune(out, cfg.train.seeds)
    outcomes = {}
    for seed in cfg.train.seeds:
        folder = layout.seed_dir(out, seed)
        hooks.started(seed, finished_history(folder, specs[seed]))
        t0 = time.perf_counter()
        try:
            seed_everything(seed)
            model = Forecaster(cfg.model, len(names), ctx).to(device)
            task = ForecastTask(train_set, cfg.baselines.proxy_batch_windows)
            result = fit_task(
                model,
                task,
                lambda m: forecast_quality(m, val_set),
                LowestMse(),
                cfg.train,
                seed,
                folder,
                specs[seed],
                on_epoch=lambda r, s=seed: hooks.epoch(s, r),
            )
            quality = {
                name: _calibrate_file(model, result.checkpoints[name], train_set, val_set) for name in ("best", "final")
            }
        except BaseException as exc:
            hooks.failed(seed, exc)
            raise
        summary = {"best_epoch": result.best_epoch or 0, **quality["best"]}
        outcomes[seed] = ProxyOutcome(seed, result, time.perf_counter() - t0, summary)
        hooks.finished(seed, outcomes[seed])
    return outcomes


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
