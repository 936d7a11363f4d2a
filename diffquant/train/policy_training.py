"""Build and train policies from config sections: the one entry point of the train stage and the search.

:func:`train_policy` builds one seed's network, objective, validation and mirror map and trains it; each seed is a
unit of the grid runner (:class:`PolicyWork`, :func:`policy_works`), so ``train.workers`` trains seeds side by side,
an interrupted seed resuming from its folder (``diffquant.study.fold_models`` builds a study's units and reports
them through :class:`~diffquant.compute.units.SeedHooks`; nothing here imports tracking).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from diffquant.compute.units import SeedHooks, Unit
from diffquant.config import Config, Hysteresis
from diffquant.data.features import mirror_spec
from diffquant.data.splits import Samples, Series
from diffquant.errors import ConfigError
from diffquant.evaluate.book import BookSeries, book_metrics
from diffquant.evaluate.scoring import Scorer
from diffquant.io import write_csv, write_json
from diffquant.model.policy import PolicyNetwork
from diffquant.model.portfolio import PortfolioPolicy, make_policy
from diffquant.sim.losses import Objective
from diffquant.train import checkpoint, layout
from diffquant.train.book_episodes import book_episodes, clock_episodes
from diffquant.train.episodes import EpisodeBatch, EpisodeExecution, episodes_from_arrays
from diffquant.train.resume import ResumeSpec, code_hash, content_hash
from diffquant.train.trainer import (
    TrainResult,
    check_batch_size,
    completed_epochs,
    finished_history,
    fit,
    resolve_device,
    seed_everything,
)

log = logging.getLogger(__name__)

VAL_HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "val_sharpe",
    "val_total_return_pct",
    "val_flat_share",
    "val_turnover",
    "val_rebalances",
)


@dataclass(frozen=True)
class TrainingData:
    """The train samples and the val series a policy trains and validates on: one val series per asset (the split
    stage's one, or every asset of a walk-forward fold, whose samples are then pooled over the assets)."""

    samples: Samples
    val: tuple[Series, ...]
    digest: str = ""  # hash of the inputs: a checkpoint trained on other data is not resumed
    source: str = ""  # where the samples came from, for error messages
    # each asset's train range: a portfolio's episodes are cut from them on one clock, and so are one asset's at a
    # decision cadence (sim.rebalance_every / rebalance_at: its episodes are longer than the split's samples)
    train_series: tuple[Series, ...] = ()

    @classmethod
    def load(cls, split_dir: Path) -> TrainingData:
        """The split stage's train samples and val series, and its train series (the same bars as the samples, so
        the digest, which names the data a checkpoint was trained on, is that of the samples and val)."""
        paths = [Path(split_dir) / "train.npz", Path(split_dir) / "val.npz"]
        series = Path(split_dir) / "train_series.npz"
        train = (Series.load(series),) if series.exists() else ()
        return cls(Samples.load(paths[0]), (Series.load(paths[1]),), content_hash(paths), str(paths[0]), train)


def training_episodes(cfg: Config, data: TrainingData) -> EpisodeBatch:
    """The episodes ``model.kind`` trains on: one asset's samples (pooled over assets), or a book's on one clock;
    at a decision cadence, one asset's too are cut on the clock from its train series."""
    execution = EpisodeExecution.of(cfg)
    if cfg.model.kind == "portfolio":
        return book_episodes(data.train_series, cfg.window, execution)
    if execution.period > 1:
        if not data.train_series:
            raise ConfigError(
                f"sim.rebalance_every / rebalance_at give a decision every {execution.period} bars, whose episodes "
                f"are cut from each asset's train series, and {data.source or 'the training data'} has none; "
                "re-run the split stage (it writes train_series.npz)"
            )
        return clock_episodes(data.train_series, cfg.window, execution)
    s = data.samples
    return episodes_from_arrays(s.features, s.close, s.funding, cfg.window.context, execution)


def validation_metrics(
    scorer: Scorer, model: PolicyNetwork | PortfolioPolicy, val: tuple[Series, ...], hysteresis: Hysteresis
) -> dict[str, float]:
    """A val check: the walk-forward metrics of one series, or each metric's mean over the assets' series (so
    checkpoint selection weighs every asset alike; one asset gives exactly its own metrics); a portfolio's: the
    metrics of its book over every asset's val series."""
    if isinstance(model, PortfolioPolicy):
        return book_metrics(scorer, model, BookSeries.of(val), hysteresis)
    per_asset = [scorer.policy(model, series, hysteresis)[1] for series in val]
    if len(per_asset) == 1:
        return per_asset[0]
    return {k: float(np.mean([m[k] for m in per_asset])) for k in per_asset[0]}


def resume_spec(cfg: Config, data: TrainingData, seed: int) -> ResumeSpec:
    """Everything that shapes a seed's weights: a ``last.pt`` written under anything else is not resumed."""
    training = {
        "train": cfg.train.identity(),
        "loss": dataclasses.asdict(cfg.loss),
        "sim": dataclasses.asdict(cfg.sim),
        "experiment": cfg.experiment,
        "data": data.digest,
        "code": code_hash(),
        "validation": {**dataclasses.asdict(cfg.eval.hysteresis), "days_per_year": cfg.eval.days_per_year},
    }
    policy = checkpoint.policy_spec(cfg.model, data.samples.feature_names, cfg.window.context)
    return ResumeSpec(policy, seed, training)


def train_policy(
    cfg: Config,
    data: TrainingData,
    seed: int,
    out_dir: Path,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """One seed's policy trained into ``out_dir`` (resumed from its ``last.pt`` when that matches), validated by
    walk-forward on ``data.val`` (:func:`validation_metrics`) with ``eval.hysteresis``; ``on_epoch`` as
    :func:`~diffquant.train.trainer.fit_task`."""
    names = data.samples.feature_names
    seed_everything(seed)
    model = make_policy(cfg.model, len(names), cfg.window.context).to(resolve_device(cfg.train.device))
    scorer = Scorer(cfg.sim, cfg.data.timeframe_minutes, cfg.eval.days_per_year)
    mirror = tuple(torch.as_tensor(a) for a in mirror_spec(names, cfg.features)) if cfg.train.mirror else None
    return fit(
        model,
        training_episodes(cfg, data),
        lambda m: validation_metrics(scorer, m, data.val, cfg.eval.hysteresis),
        Objective(cfg.loss, cfg.sim.smooth_abs_eps),
        cfg.sim,
        cfg.train,
        cfg.window.horizon,
        seed,
        out_dir,
        resume_spec(cfg, data, seed),
        mirror,
        on_epoch=on_epoch,
        progress=progress,
    )


@dataclass(frozen=True)
class SeedOutcome:
    """One trained seed: the trainer's result, its wall time and the files written beside the checkpoints."""

    seed: int
    result: TrainResult
    seconds: float
    files: dict[str, Path]  # history.json, val_history.csv

    def summary(self) -> dict[str, float | int]:
        """What ``outputs/metrics/train.json`` keeps per seed (deterministic: no timings)."""
        last_check = [r for r in self.result.history if "val_sharpe" in r][-1]
        return {
            "best_epoch": self.result.best_epoch or 0,
            "best_val_sharpe": self.result.selected_score,
            "final_val_sharpe": last_check["val_sharpe"],
            "final_train_loss": self.result.history[-1]["train_loss"],
        }

    def run_metrics(self) -> dict[str, float | int]:
        """What the seed's MLflow run gets at the end (timings included)."""
        return {
            "best_epoch": self.result.best_epoch or 0,
            "best_val_sharpe": self.result.selected_score,
            "train_seconds": self.seconds,
            "resumed_after_epoch": self.result.resumed_from,
        }


@dataclass(frozen=True)
class PolicyWork:
    """A policy unit: one seed trained on ``data`` into ``folder`` (its history files written beside the
    checkpoints)."""

    unit: Unit
    cfg: Config
    data: TrainingData
    folder: Path

    def finished_epochs(self) -> list[dict[str, Any]]:
        return finished_history(self.folder, resume_spec(self.cfg, self.data, self.unit.seed))

    def run(self, on_epoch: Callable[[dict[str, Any]], None], progress: bool) -> SeedOutcome:
        t0 = time.perf_counter()
        result = train_policy(self.cfg, self.data, self.unit.seed, self.folder, on_epoch, progress)
        checked = [r for r in result.history if "val_sharpe" in r]
        files = {"history": self.folder / layout.HISTORY_JSON, "val_history": self.folder / layout.VAL_HISTORY_CSV}
        write_csv(files["val_history"], pd.DataFrame(checked)[list(VAL_HISTORY_COLUMNS)])
        write_json(files["history"], result.history)
        outcome = SeedOutcome(self.unit.seed, result, time.perf_counter() - t0, files)
        log.info(
            "%s: %d epochs in %.1f s; best epoch %s (val Sharpe %s)",
            self.unit.name,
            len(result.history),
            outcome.seconds,
            result.best_epoch,
            result.best_score,
        )
        return outcome


def resumable(cfg: Config, data: TrainingData, out: Path) -> bool:
    """Whether any seed would continue from a ``last.pt`` of an interrupted run with these params."""
    return any(completed_epochs(layout.seed_dir(out, s), resume_spec(cfg, data, s)) for s in cfg.train.seeds)


def policy_works(cfg: Config, data: TrainingData, out: Path, group: str = "") -> list[PolicyWork]:
    """One unit per seed of ``train.seeds``, into ``<out>/seed_<s>/``."""
    return [PolicyWork(Unit("policy", s, group), cfg, data, layout.seed_dir(out, s)) for s in cfg.train.seeds]


def prepare_policies(cfg: Config, data: TrainingData, out: Path, hooks: SeedHooks) -> None:
    """The checks and the bookkeeping before a group's seeds train: a refused config leaves nothing behind (the
    checks come before ``hooks.begin`` and before any file is touched); stale seeds' folders are then removed."""
    check_batch_size(len(training_episodes(cfg, data)), cfg.train, data.source)
    hooks.begin(resumable(cfg, data, out))
    layout.prune(out, cfg.train.seeds)
