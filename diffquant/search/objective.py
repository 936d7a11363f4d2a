"""The search space and what one trial is: one configuration trained from scratch and scored on val.

A trial's value is the val Sharpe of the checkpoint the trainer selects (``TrainResult.selected_score``: the final
check when none qualified), not the maximum over noisy val checks; :mod:`diffquant.search.rounds` reports the running
value of that selection at every val check, so a median pruner can stop a trial that lags behind the others at the
same epoch. A trial is trained with a seed derived from (study seed, trial number) only, and with the thread count
the driver gave it, so its value does not depend on which worker ran it or in what order.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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


def train_trial(cfg: Config, data: TrainingData, seed: int) -> TrialOutcome:
    """Train one configuration from scratch as a trial does (one unit, here, checkpoints in a temp dir) and score its
    selected checkpoint: how a trial's value is reproduced (give ``cfg`` the trial's ``threads`` user attribute)."""
    cfg = with_unit_threads(cfg)
    with tempfile.TemporaryDirectory(prefix="diffquant-trial-") as tmp:
        work = PolicyWork(Unit("policy", seed), cfg, data, Path(tmp))
        result = run_grid([work], lambda _: QuietHooks(), cfg.train, workers=1, progress=False)[work.unit].result
    return TrialOutcome(result.selected_score, result.best_epoch, result.history)
