"""The search through the grid runner: the driver asks Optuna for trials, trains them as units wherever the grid
runs (one after another here, the local pool, or Ray), and tells Optuna each result.

A round asks ``parallel`` trials at once (TPE's ``constant_liar`` keeps them apart), trains them as one grid and
tells each its outcome. Each trial's hooks run in the driver: they open the trial's nested MLflow run, log every
epoch as it arrives, report each val check's running value to the trial and, when the pruner says so, stop the unit
(:class:`~diffquant.compute.units.StopUnit`). So the search starts no processes of its own: the grid's engines are
the one way units reach workers, and only the driver touches the Optuna storage and MLflow.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import optuna

from diffquant import tracking
from diffquant.compute.grid import run_grid, with_unit_threads
from diffquant.compute.units import QuietHooks, StopUnit, Unit
from diffquant.config import Config
from diffquant.search.objective import search_space, trial_seed, with_params
from diffquant.train.policy_training import PolicyWork, SeedOutcome, TrainingData
from diffquant.train.trainer import SharpeSelection

log = logging.getLogger(__name__)


class TrialHooks(QuietHooks):
    """One trial's unit, seen from the driver: its nested MLflow run, its val checks reported to the pruner."""

    def __init__(
        self, trial: optuna.Trial, cfg: Config, params: dict[str, float], parent: tracking.Run | None, label: str
    ) -> None:
        self.trial, self.params, self.parent, self.label = trial, params, parent, label
        self.selection = SharpeSelection(cfg.train.select_min_rebalances)
        self.epochs = cfg.train.epochs
        self.best: float | None = None  # the running value: the selected check so far
        self.run: tracking.Run | None = None
        self.outcome: SeedOutcome | None = None
        self.error: BaseException | None = None
        self.pruned_at = 0

    def started(self, seed: int, finished: list[dict[str, Any]]) -> None:
        if self.parent is None:
            return
        tags = {"optuna_trial": str(self.trial.number), "worker": self.label}
        self.run = tracking.start_child(self.parent, f"trial-{self.trial.number}", tags)
        self.run.log_params({**self.params, "train.epochs": self.epochs, "seed": seed, "trial": self.trial.number})

    def epoch(self, seed: int, record: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log_history([record])
        val = {k.removeprefix("val_"): v for k, v in record.items() if k.startswith("val_")}
        if not val:
            return
        score = self.selection.score(val)
        if score is not None and (self.best is None or score > self.best):
            self.best = score
        value = self.best if self.best is not None else self.selection.fallback(val)
        self.trial.report(value, record["epoch"])
        if self.trial.should_prune():
            self.pruned_at = record["epoch"]
            raise StopUnit(f"trial {self.trial.number} pruned at epoch {record['epoch']} (val Sharpe {value:.3f})")

    def finished(self, seed: int, outcome: SeedOutcome) -> None:
        self.outcome = outcome

    def failed(self, seed: int, exc: BaseException) -> None:
        self.error = exc

    def tell(self, study: optuna.Study) -> None:
        """The trial's end, in Optuna and in its MLflow run: complete (its value), pruned, or failed."""
        if self.outcome is not None:
            value = self.outcome.result.selected_score
            state = "COMPLETE" if math.isfinite(value) else "FAIL"  # as Optuna judges a value
            study.tell(self.trial, value if state == "COMPLETE" else None, state=optuna.trial.TrialState[state])
        elif self.pruned_at:
            state = "PRUNED"
            study.tell(self.trial, state=optuna.trial.TrialState.PRUNED)
        else:
            state = "FAIL"
            study.tell(self.trial, state=optuna.trial.TrialState.FAIL)
        if self.run is not None:
            self.run.set_tags({"optuna_state": state})
            if self.outcome is not None:
                result = self.outcome.result
                metrics = {"objective_val_sharpe": result.selected_score, "best_epoch": result.best_epoch or 0}
                self.run.log_metrics(metrics)
            self.run.finish("FAILED" if self.error is not None else "FINISHED")


def run_search(
    study: optuna.Study,
    cfg: Config,
    data: TrainingData,
    n_trials: int,
    epochs: int,
    parent: tracking.Run | None,
    label: str,
    parallel: int = 1,
) -> int:
    """Run rounds of ``parallel`` trials until the study holds ``n_trials`` (any state, other commands' included);
    how many ran here. A trial that raises fails, and its exception ends the search once its round is told."""
    ran = 0
    while (left := n_trials - len(study.get_trials(deepcopy=False))) > 0:
        trials = [study.ask() for _ in range(min(parallel, left))]
        hooks: dict[Unit, TrialHooks] = {}
        with tempfile.TemporaryDirectory(prefix="diffquant-trials-") as tmp:
            works = []
            for trial in trials:
                params = {d.key: trial.suggest_float(d.key, d.low, d.high, log=d.log) for d in search_space(cfg)}
                trial_cfg = with_params(cfg, params, epochs)
                trial_cfg = with_unit_threads(
                    dataclasses.replace(trial_cfg, train=dataclasses.replace(trial_cfg.train, workers=parallel))
                )
                seed = trial_seed(cfg.seed, trial.number)
                for key, value in {"seed": seed, "worker": label, "threads": trial_cfg.train.threads}.items():
                    trial.set_user_attr(key, value)
                unit = Unit("policy", seed, f"trial_{trial.number}")
                works.append(PolicyWork(unit, trial_cfg, data, Path(tmp) / unit.group))
                hooks[unit] = TrialHooks(trial, trial_cfg, params, parent, label)
            try:
                run_grid(works, hooks.__getitem__, works[0].cfg.train, progress=False)
            finally:
                for h in hooks.values():
                    h.tell(study)
        ran += len(trials)
        log.info("%d trial(s) run here; the study holds %d", ran, len(study.get_trials(deepcopy=False)))
    return ran
