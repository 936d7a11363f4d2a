"""The search space and the objective: one trial = one configuration trained from scratch and scored on val.

A trial's value is the val Sharpe of the checkpoint the trainer selects (``TrainResult.selected_score``: the final
check when none qualified), not the maximum over noisy val checks. The running value of that selection is
reported at every val check, so a median pruner can stop a trial that lags behind the others at the same epoch.
A trial is trained with a seed derived from (study seed, trial number) only, so its value does not depend on
which worker ran it or in what order.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from diffquant import tracking
from diffquant.compute.grid import run_grid, with_unit_threads
from diffquant.compute.units import QuietHooks, Unit
from diffquant.config import Config, from_dict
from diffquant.errors import ConfigError
from diffquant.train.policy_training import PolicyWork, TrainingData


@dataclass(frozen=True)
class Dim:
    """One searched hyper-parameter: a dotted params.yaml key and its range (the default lies inside)."""

    key: str
    low: float
    high: float
    log: bool = False


# loss.lambda_sharpe stays 1: AdamW is nearly invariant to the loss's scale, so only the ratios of the λs matter.
SPACE: tuple[Dim, ...] = (
    Dim("train.lr", 1e-4, 3e-3, log=True),
    Dim("train.weight_decay", 1e-6, 1e-3, log=True),
    Dim("train.grad_clip", 0.3, 3.0, log=True),
    Dim("loss.lambda_turnover", 1e-3, 0.1, log=True),
    Dim("loss.lambda_drawdown", 1e-3, 0.3, log=True),
    Dim("loss.lambda_terminal", 0.0, 0.05),
    Dim("loss.lambda_flat", 0.0, 2.0),
    Dim("loss.lambda_bias", 0.0, 1.0),
    Dim("model.head.tau_dir", 0.3, 3.0, log=True),
    Dim("model.head.tau_gate", 0.3, 3.0, log=True),
)


def search_space(cfg: Config) -> tuple[Dim, ...]:
    """The λs act only in the hybrid loss; searching them for a plain ratio loss (sharpe, sortino, calmar, cdar) would
    waste trials."""
    return tuple(d for d in SPACE if cfg.loss.type == "hybrid" or not d.key.startswith("loss.lambda_"))


def trial_seed(study_seed: int, number: int) -> int:
    """The training seed of trial ``number``: a function of the study seed and the number only."""
    return int(np.random.SeedSequence([study_seed % 2**63, number]).generate_state(1)[0])


def with_params(cfg: Config, params: dict[str, Any], epochs: int = 0) -> Config:
    """``cfg`` with dotted-key overrides (and ``train.epochs`` when ``epochs`` > 0), validated like params.yaml."""
    raw = cfg.to_dict()
    for key, value in {**params, **({"train.epochs": epochs} if epochs else {})}.items():
        *sections, name = key.split(".")
        node = raw
        for s in sections:
            node = node[s]
        if name not in node:
            raise ConfigError(f"{key} is not a params key; the search space names only existing keys")
        node[name] = value
    return from_dict(raw)


@dataclass(frozen=True)
class TrialOutcome:
    value: float  # val Sharpe of the checkpoint the trainer selects
    best_epoch: int | None
    history: list[dict[str, Any]]


def train_trial(
    cfg: Config,
    data: TrainingData,
    seed: int,
    on_check: Callable[[int, float], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrialOutcome:
    """Train one configuration from scratch (one unit of the grid runner, in this process, checkpoints in a temp
    dir) and score its selected checkpoint.

    ``on_check(epoch, value)`` gets, at every val check, the value the trial would have if training stopped there;
    it may raise (``optuna.TrialPruned``) to stop the trial.
    """
    cfg = with_unit_threads(cfg)
    with tempfile.TemporaryDirectory(prefix="diffquant-trial-") as tmp:
        work = PolicyWork(Unit("policy", seed), cfg, data, Path(tmp), on_check)
        outcome = run_grid([work], lambda _: _TrialHooks(on_epoch), cfg.train, workers=1, progress=False)[work.unit]
    result = outcome.result
    return TrialOutcome(result.selected_score, result.best_epoch, result.history)


class _TrialHooks(QuietHooks):
    """A trial's one unit reports its epochs to ``on_epoch`` (the trial's MLflow run); the rest is the objective's."""

    def __init__(self, on_epoch: Callable[[dict[str, Any]], None] | None) -> None:
        self.on_epoch = on_epoch

    def epoch(self, seed: int, record: dict[str, Any]) -> None:
        if self.on_epoch is not None:
            self.on_epoch(record)


class TrialObjective:
    """The Optuna objective: suggest params, train, report val checks to the pruner, log a nested MLflow run."""

    def __init__(self, cfg: Config, data: TrainingData, epochs: int, parent: tracking.Run | None, worker: str) -> None:
        self.cfg, self.data, self.epochs, self.parent, self.worker = cfg, data, epochs, parent, worker

    def __call__(self, trial: optuna.Trial) -> float:
        params = {d.key: trial.suggest_float(d.key, d.low, d.high, log=d.log) for d in search_space(self.cfg)}
        cfg = with_params(self.cfg, params, self.epochs)
        seed = trial_seed(self.cfg.seed, trial.number)
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("worker", self.worker)

        def report(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} (val Sharpe so far {value:.3f})")

        if self.parent is None:
            return train_trial(cfg, self.data, seed, report).value
        pruned: optuna.TrialPruned | None = None
        tags = {"optuna_trial": str(trial.number), "worker": self.worker}
        with tracking.child_run(self.parent, f"trial-{trial.number}", tags) as run:
            run.log_params({**params, "train.epochs": cfg.train.epochs, "seed": seed, "trial": trial.number})
            try:
                outcome = train_trial(cfg, self.data, seed, report, lambda r: run.log_history([r]))
            except optuna.TrialPruned as exc:  # a pruned trial is a finished run, not a failed one
                run.set_tags({"optuna_state": "PRUNED"})
                pruned = exc
            else:
                run.set_tags({"optuna_state": "COMPLETE" if math.isfinite(outcome.value) else "FAIL"})  # as Optuna
                run.log_metrics({"objective_val_sharpe": outcome.value, "best_epoch": outcome.best_epoch or 0})
        if pruned is not None:
            raise pruned
        return outcome.value
