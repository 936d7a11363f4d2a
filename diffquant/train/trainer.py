"""The training loop: AdamW, warm-up then cosine, clipping, walk-forward validation, resumable checkpoints.

The loop knows nothing of MLflow or files other than its checkpoints: validation is a callable and every finished
epoch is handed to ``on_epoch`` (the stage logs it). Randomness is reseeded from (seed, epoch) at each epoch start,
so a run resumed from its last checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from diffquant.config import SimConfig, TrainConfig
from diffquant.errors import ConfigError
from diffquant.evaluate.metrics import sharpe
from diffquant.model.policy import PolicyNetwork
from diffquant.model.portfolio import PortfolioPolicy
from diffquant.sim.losses import Objective
from diffquant.train import checkpoint
from diffquant.train.episodes import EpisodeBatch, batch_loss, mirror
from diffquant.train.layout import CHECKPOINTS, checkpoint_file
from diffquant.train.resume import ResumeSpec

log = logging.getLogger(__name__)

LAST, BEST, FINAL = (checkpoint_file(n) for n in ("last", "best", "final"))


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    best_epoch: int | None  # None: no validation check qualified, best.pt is the final model
    best_score: float | None  # the selection score of best.pt (val Sharpe for the policy)
    selected_score: float  # best_score, or the last check's fallback score when none qualified (best.pt = final)
    resumed_from: int = 0  # epochs already done when this call started
    checkpoints: dict[str, Path] = field(default_factory=dict)


class Selection(Protocol):
    """Which validation check is "best": ``fit_task`` keeps the highest score; None can not be best."""

    def score(self, val: dict[str, float]) -> float | None: ...

    def fallback(self, val: dict[str, float]) -> float:
        """The score reported for a check when no check qualified (best.pt is then the final model)."""
        ...


@dataclass(frozen=True)
class SharpeSelection:
    """The policy's rule: the highest val Sharpe among checks that traded at least ``min_rebalances`` times.

    A model that (almost) never trades is not a candidate, whatever its Sharpe (docs/upstream.md, "Defects
    fixed" item 6).
    """

    min_rebalances: int

    def score(self, val: dict[str, float]) -> float | None:
        qualifies = val.get("rebalances", 0) >= self.min_rebalances and math.isfinite(val.get("sharpe", math.nan))
        return float(val["sharpe"]) if qualifies else None

    def fallback(self, val: dict[str, float]) -> float:
        return float(val["sharpe"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is visible; use train.device=auto or cpu")
    return torch.device(name)


def check_batch_size(n_samples: int, cfg: TrainConfig, where: str = "") -> None:
    """Every batch has ``train.batch_size`` samples (the last partial one is dropped): fewer samples train nothing."""
    if n_samples < cfg.batch_size:
        source = f" in {where}" if where else ""
        raise ConfigError(
            f"train.batch_size ({cfg.batch_size}) is larger than the {n_samples} training samples{source}; lower "
            "train.batch_size or widen the train split"
        )


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW plus a per-epoch schedule: linear warm-up from ``warmup_start_factor``, then cosine to ``min_lr``.

    AdamW runs its multi-tensor (``foreach``) implementation: on CPU torch would otherwise loop over the ~65 parameter
    tensors in Python, ~10 ops each; the foreach update gives the same floats (tests/train/test_step_speed.py).
    """
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2), foreach=True
    )
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=max(cfg.epochs - cfg.warmup_epochs, 1), eta_min=cfg.min_lr
    )
    if cfg.warmup_epochs == 0:
        return opt, cosine
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=cfg.warmup_start_factor, total_iters=cfg.warmup_epochs)
    return opt, torch.optim.lr_scheduler.SequentialLR(opt, [warmup, cosine], milestones=[cfg.warmup_epochs])


class EpochTask(Protocol):
    """What one kind of model trains on: ``fit_task`` owns the loop, the optimiser, checkpoints and selection."""

    n_items: int  # samples in an epoch; batches of ``batch_size`` are drawn from a fresh permutation each epoch
    batch_size: int

    def loss(self, model: nn.Module, idx: Tensor) -> Tensor:
        """The loss of the batch of samples ``idx`` (may draw from torch's RNG, e.g. for augmentation)."""
        ...

    def summary(self) -> dict[str, float]:
        """The epoch's training metrics (train_loss, ...); resets what ``loss`` accumulated."""
        ...


class PolicyTask:
    """Episodes scored by the differentiable simulator under the objective, each batch mirrored with ``mirror_prob``."""

    def __init__(
        self,
        episodes: EpisodeBatch,
        objective: Objective,
        sim: SimConfig,
        cfg: TrainConfig,
        horizon: int,
        mirror_map: tuple[Tensor, Tensor] | None,
    ) -> None:
        self.episodes, self.objective, self.sim, self.cfg, self.horizon = episodes, objective, sim, cfg, horizon
        self.mirror_map = mirror_map
        self.n_items, self.batch_size = len(episodes), cfg.batch_size
        self._losses = LossMeter()
        self._pnls: list[Tensor] = []

    def loss(self, model: nn.Module, idx: Tensor) -> Tensor:
        batch = self.episodes.index(idx)
        use_mirror = self.cfg.mirror and self.mirror_map is not None and torch.rand(()).item() < self.cfg.mirror_prob
        mirrored = mirror(batch, *self.mirror_map) if use_mirror else None
        loss, _, pnl = batch_loss(model, batch, self.objective, self.sim, self.horizon, self.cfg.full_bptt, mirrored)
        self._losses.add(loss)
        self._pnls.append(pnl)
        return loss

    def summary(self) -> dict[str, float]:
        pnl = torch.cat(self._pnls).flatten()
        out = {
            "train_loss": self._losses.pop_mean(),
            "train_sharpe_per_bar": sharpe(pnl.double().cpu().numpy(), ann=1.0),
        }
        self._pnls = []
        return out


def fit(
    model: PolicyNetwork | PortfolioPolicy,
    episodes: EpisodeBatch,
    validate: Callable[[PolicyNetwork | PortfolioPolicy], dict[str, float]],
    objective: Objective,
    sim: SimConfig,
    cfg: TrainConfig,
    horizon: int,
    seed: int,
    out_dir: Path,
    spec: ResumeSpec,
    mirror_map: tuple[Tensor, Tensor] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_check: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train the policy in place on ``episodes``; "best" is chosen by :class:`SharpeSelection`.

    See :func:`fit_task` for checkpoints, resuming and the callbacks.
    """
    check_batch_size(len(episodes), cfg)
    device = next(model.parameters()).device
    mirror_map = tuple(t.to(device) for t in mirror_map) if mirror_map is not None else None
    task = PolicyTask(episodes.to(device), objective, sim, cfg, horizon, mirror_map)
    selection = SharpeSelection(cfg.select_min_rebalances)
    return fit_task(model, task, validate, selection, cfg, seed, out_dir, spec, on_epoch, on_check, progress)


def fit_task(
    model: nn.Module,
    task: EpochTask,
    validate: Callable[[Any], dict[str, float]],
    selection: Selection,
    cfg: TrainConfig,
    seed: int,
    out_dir: Path,
    spec: ResumeSpec,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_check: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` in place; checkpoints ``last.pt`` (every epoch), ``best.pt`` and ``final.pt`` in ``out_dir``.

    Every ``val_freq`` epochs ``validate`` runs and ``selection`` ranks it. ``on_epoch(record)`` gets every finished
    epoch; ``on_check(epoch, value)`` the score the run would report if it stopped at this check (it may raise to
    stop training, as a pruner does). ``spec`` guards resuming: a ``last.pt`` written under another spec is ignored
    and training starts over.
    """
    out_dir = Path(out_dir)
    opt, sched = make_optimizer(model, cfg)
    state = _resume(out_dir / LAST, spec, model, opt, sched)
    history: list[dict[str, Any]] = state["history"]
    best_epoch, best_score = state["best_epoch"], state["best_score"]
    start = state["epoch"]
    device = next(model.parameters()).device

    bar = tqdm(
        range(start, cfg.epochs), desc="train", unit="epoch", disable=not progress, initial=start, total=cfg.epochs
    )
    for epoch in bar:
        torch.manual_seed(seed * 1_000_003 + epoch)
        record = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], **_train_epoch(model, task, opt, cfg, device)}
        sched.step()
        val = None
        if (epoch + 1) % cfg.val_freq == 0 or epoch + 1 == cfg.epochs:
            val = validate(model)
            record.update({f"val_{k}": v for k, v in val.items()})
            candidate = selection.score(val)
            if candidate is not None and (best_score is None or candidate > best_score):
                best_epoch, best_score = epoch + 1, candidate
                checkpoint.save(
                    out_dir / BEST,
                    _state(model, opt, sched, epoch + 1, [*history, record], spec, best_epoch, best_score),
                )
        history.append(record)
        checkpoint.save(out_dir / LAST, _state(model, opt, sched, epoch + 1, history, spec, best_epoch, best_score))
        checked = {k: f"{record[k]:.4g}" for k in ("val_sharpe", "val_mse") if k in record}  # the policy's, the proxy's
        bar.set_postfix(loss=f"{record['train_loss']:.4f}", **checked)
        if on_epoch is not None:
            on_epoch(record)
        if val is not None and on_check is not None:
            on_check(epoch + 1, best_score if best_score is not None else selection.fallback(val))

    final = _state(model, opt, sched, cfg.epochs, history, spec, best_epoch, best_score)
    checkpoint.save(out_dir / FINAL, final)
    if best_epoch is None:
        log.warning("no validation check qualified as best; best.pt = the final model")
        checkpoint.save(out_dir / BEST, final)
    last_check = next(r for r in reversed(history) if any(k.startswith("val_") for k in r))
    selected = (
        best_score
        if best_score is not None
        else selection.fallback({k.removeprefix("val_"): v for k, v in last_check.items() if k.startswith("val_")})
    )
    paths = {name: out_dir / checkpoint_file(name) for name in CHECKPOINTS}
    return TrainResult(history, best_epoch, best_score, selected, start, paths)


def _train_epoch(
    model: nn.Module, task: EpochTask, opt: torch.optim.Optimizer, cfg: TrainConfig, device: torch.device
) -> dict[str, float]:
    model.train()
    order = torch.randperm(task.n_items, device=device)
    for b in range(task.n_items // task.batch_size):  # drop_last: every batch has the same size
        loss = task.loss(model, order[b * task.batch_size : (b + 1) * task.batch_size])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model, cfg.grad_clip)
        opt.step()
    return task.summary()


def clip_gradients(model: nn.Module, max_norm: float) -> Tensor:
    """``clip_grad_norm_`` over all parameters with its multi-tensor kernels (torch picks them only on GPUs by
    default): the same norm and the same clipped gradients as the per-tensor loop, in two ops instead of ~130."""
    return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)


class LossMeter:
    """The mean of an epoch's batch losses, kept on the device until the epoch ends: no host sync per step.

    The losses are averaged in float64 on the host, as the per-step ``loss.item()`` list was: the same number.
    """

    def __init__(self) -> None:
        self._losses: list[Tensor] = []

    def add(self, loss: Tensor) -> None:
        self._losses.append(loss.detach())

    def pop_mean(self) -> float:
        """The mean since the last call; resets."""
        losses, self._losses = self._losses, []
        return float(np.mean(torch.stack(losses).double().cpu().numpy()))


def _state(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    epoch: int,
    history: list[dict[str, Any]],
    spec: ResumeSpec,
    best_epoch: int | None,
    best_score: float | None,
) -> dict[str, Any]:
    return {
        "model_state": model.state_dict(),
        "optimizer_state": opt.state_dict(),
        "scheduler_state": sched.state_dict(),
        "epoch": epoch,
        "history": history,
        "spec": spec.to_dict(),
        "best_epoch": best_epoch,
        "best_score": best_score,
    }


def completed_epochs(out_dir: Path, spec: ResumeSpec) -> int:
    """Epochs a restarted ``fit`` with this ``spec`` would skip (0 when it would start over)."""
    path = Path(out_dir) / LAST
    if not path.exists():
        return 0
    try:
        state = checkpoint.load(path)
    except checkpoint.CheckpointError:
        return 0
    return int(state["epoch"]) if state.get("spec") == spec.to_dict() else 0


def finished_history(out_dir: Path, spec: ResumeSpec) -> list[dict[str, Any]]:
    """The epoch records a restarted ``fit`` with this ``spec`` would not redo (empty when it would start over)."""
    return checkpoint.load(Path(out_dir) / LAST)["history"] if completed_epochs(out_dir, spec) else []


def _resume(path: Path, spec: ResumeSpec, model: nn.Module, opt: torch.optim.Optimizer, sched: Any) -> dict[str, Any]:
    fresh = {"epoch": 0, "history": [], "best_epoch": None, "best_score": None}
    if not path.exists():
        return fresh
    try:
        state = checkpoint.load(path)
    except checkpoint.CheckpointError as exc:
        log.warning("ignoring unreadable %s, training from scratch: %s", path, exc)
        return fresh
    if state.get("spec") != spec.to_dict():
        log.info("%s was written under other params; training from scratch", path)
        return fresh
    model.load_state_dict(state["model_state"])
    opt.load_state_dict(state["optimizer_state"])
    sched.load_state_dict(state["scheduler_state"])
    log.info("resuming from %s after epoch %d", path, state["epoch"])
    return state
