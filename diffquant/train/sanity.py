"""Pre-training checks on synthetic markets with known answers; the sanity stage fails the pipeline on any FAIL.

1. gradient flow: every parameter gets a finite, non-zero gradient from the configured loss;
2. trend bias: on uninformative features over a steadily rising (falling) market the policy learns to be long
   (short): the loss, simulator and optimiser can at least learn a constant exposure (upstream's check);
3. signal use (upstream has none): when the features announce the return the decision will earn, training makes
   the in-sample Sharpe clearly positive, which a constant bias can not do on a market without drift.

Every check runs at the study's execution (``EpisodeExecution``: the decision cadence and the volatility target's
estimates; the band and the target themselves are in ``sim``): an episode holds ``horizon`` decisions, as in training.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch

from diffquant.config import SimConfig
from diffquant.evaluate.metrics import sharpe
from diffquant.model.policy import PolicyNetwork
from diffquant.sim.losses import Objective
from diffquant.train.episodes import EVERY_BAR, EpisodeBatch, EpisodeExecution, batch_loss, episodes_from_arrays


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    value: float
    detail: str


def _episodes(returns: np.ndarray, features: np.ndarray, context: int, execution: EpisodeExecution) -> EpisodeBatch:
    close = 50_000.0 * np.cumprod(1.0 + returns, axis=1)
    return episodes_from_arrays(features.astype(np.float32), close, np.zeros_like(close), context, execution)


def _train(
    model: PolicyNetwork, batch: EpisodeBatch, objective: Objective, sim: SimConfig, horizon: int, steps: int, lr: float
) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss, _, _ = batch_loss(model, batch, objective, sim, horizon, full_bptt=True)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def gradient_flow(
    model: PolicyNetwork,
    objective: Objective,
    sim: SimConfig,
    horizon: int,
    gen: torch.Generator,
    execution: EpisodeExecution = EVERY_BAR,
) -> CheckResult:
    model = copy.deepcopy(model).eval()
    b, length = 8, execution.length(model.context, horizon)
    returns = 0.001 + 0.003 * torch.randn(b, length, generator=gen, dtype=torch.float64).numpy()
    features = torch.randn(b, length, model.n_features, generator=gen).numpy()
    batch = _episodes(returns, features, model.context, execution)
    loss, _, _ = batch_loss(model, batch, objective, sim, horizon, full_bptt=True)
    loss.backward()
    dead = [
        n
        for n, p in model.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0
    ]
    n = sum(1 for _ in model.parameters())
    return CheckResult(
        "gradient_flow",
        not dead,
        float(n - len(dead)),
        f"{n - len(dead)}/{n} parameter tensors get a finite non-zero gradient"
        + (f"; dead: {', '.join(dead[:5])}" if dead else ""),
    )


def trend_bias(
    model: PolicyNetwork,
    objective: Objective,
    sim: SimConfig,
    horizon: int,
    direction: int,
    gen: torch.Generator,
    steps: int = 50,
    execution: EpisodeExecution = EVERY_BAR,
) -> CheckResult:
    model = copy.deepcopy(model)
    b, length = 8, execution.length(model.context, horizon)
    returns = np.full((b, length), direction * 0.001)
    features = 0.01 * torch.randn(b, length, model.n_features, generator=gen).numpy()
    _train(model, _episodes(returns, features, model.context, execution), objective, sim, horizon, steps, 1e-3)
    fresh = 0.01 * torch.randn(64, model.context, model.n_features, generator=gen)
    model.eval()
    with torch.no_grad():
        mean = model(fresh, torch.zeros(64), torch.zeros(64))[0].mean().item()
    name = "long_bias" if direction > 0 else "short_bias"
    passed = np.sign(mean) == direction and abs(mean) > 0.01
    return CheckResult(
        name,
        bool(passed),
        mean,
        f"mean position {mean:+.4f} on a {'rising' if direction > 0 else 'falling'} "
        "market (needs the trend's sign and |mean| > 0.01)",
    )


def signal_use(
    model: PolicyNetwork,
    objective: Objective,
    sim: SimConfig,
    horizon: int,
    gen: torch.Generator,
    steps: int = 150,
    min_sharpe: float = 0.2,
    execution: EpisodeExecution = EVERY_BAR,
) -> CheckResult:
    """Channel 0 at bar k carries the sign of the return that a decision at k earns (bar k + 1 + lag). At a cadence
    of P bars a decision holds P bars, so the returns' sign is drawn once per holding period (P = 1: every bar)."""
    model = copy.deepcopy(model)
    b, length, lag, every = 64, execution.length(model.context, horizon), sim.execution_lag_bars, execution.period
    n = length + lag + 1
    offset = -(model.context + lag) % every  # a holding period starts at bar context + lag + t P
    held = torch.randint(0, 2, (b, (n + offset + every - 1) // every), generator=gen).double().numpy() * 2 - 1
    signs = held[:, (np.arange(n) + offset) // every]
    returns = 0.002 * signs[:, :length]
    features = 0.5 * torch.randn(b, length, model.n_features, generator=gen).numpy()
    features[:, :, 0] += signs[:, 1 + lag : length + 1 + lag]
    batch = _episodes(returns, features, model.context, execution)
    _train(model, batch, objective, sim, horizon, steps, 3e-3)
    model.eval()
    with torch.no_grad():
        _, _, pnl = batch_loss(model, batch, objective, sim, horizon, full_bptt=True)
    per_bar = sharpe(pnl.double().flatten().numpy(), ann=1.0)
    return CheckResult(
        "signal_use",
        per_bar > min_sharpe,
        per_bar,
        f"in-sample per-bar Sharpe {per_bar:+.3f} with the next return announced (needs > {min_sharpe})",
    )


def run_checks(
    model: PolicyNetwork,
    objective: Objective,
    sim: SimConfig,
    horizon: int,
    seed: int,
    *,
    trend_steps: int = 50,
    signal_steps: int = 150,
    execution: EpisodeExecution = EVERY_BAR,
) -> list[dict]:
    """All checks, each from its own seeded generator so they do not depend on each other's order."""
    torch.manual_seed(seed)
    gen = [torch.Generator().manual_seed(seed + i) for i in range(4)]
    checks = [
        gradient_flow(model, objective, sim, horizon, gen[0], execution),
        trend_bias(model, objective, sim, horizon, +1, gen[1], trend_steps, execution),
        trend_bias(model, objective, sim, horizon, -1, gen[2], trend_steps, execution),
        signal_use(model, objective, sim, horizon, gen[3], signal_steps, execution=execution),
    ]
    return [asdict(c) for c in checks]
