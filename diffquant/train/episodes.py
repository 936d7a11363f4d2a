"""Training episodes as tensors, their mirror images, and the loss of a batch of episodes.

An episode is one training sample of ctx + H P bars: H decisions at bars ctx-1, ctx-1+P, .., each held for P bars
(P = ``model.decision_every``, 1 by default), scored over the H P bars ctx .. ctx+HP-1 under the execution lag
(docs/design_notes.md). Returns are computed once from float64 prices, and
so is each episode's context volatility (the market's regime before its first decision, for the regime-weighted loss).
A portfolio's episode holds A assets on one clock (features (B, ctx + H, A, F), returns and funding (B, H, A)) and
``present`` (B, A) marks the assets with data in it (:mod:`diffquant.train.book_episodes` cuts them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from diffquant.config import Config, SimConfig
from diffquant.model.policy import PolicyNetwork
from diffquant.model.portfolio import PortfolioPolicy
from diffquant.sim.execution import (
    execute_decisions,
    log_returns,
    market_betas,
    risk_units,
    second_moment,
)
from diffquant.sim.losses import Objective
from diffquant.sim.simulator import bar_returns, held_positions, simulate


@dataclass(frozen=True)
class EpisodeBatch:
    features: Tensor  # (B, ctx + H P, F) float32; a portfolio's (B, ctx + H P, A, F), NaN where an asset is absent
    returns: Tensor  # (B, H P) simple returns of the scored bars; a portfolio's (B, H P, A), 0 where absent
    funding: Tensor  # (B, H P) funding rate of the scored bars; a portfolio's (B, H P, A), 0 where absent
    context_vol: Tensor  # (B,) realised volatility of the context bars (context_volatility; a book: present assets')
    present: Tensor | None = None  # a portfolio's (B, A) bool: the asset has every bar of the episode
    risk: Tensor | None = None  # with sim.vol_target: per decision (B, H), a book's (B, H, A, A) (EpisodeExecution)
    beta: Tensor | None = None  # a beta-neutral book's (B, H, A): each asset's beta at each decision

    def __len__(self) -> int:
        return self.features.shape[0]

    def _with(self, f: Callable[[Tensor], Tensor]) -> EpisodeBatch:
        return EpisodeBatch(**{k: None if v is None else f(v) for k, v in self._parts().items()})

    def _parts(self) -> dict[str, Tensor | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def index(self, idx: Tensor) -> EpisodeBatch:
        return self._with(lambda t: t[idx])

    def cat(self, other: EpisodeBatch) -> EpisodeBatch:
        theirs = other._parts()
        return EpisodeBatch(**{k: None if v is None else torch.cat([v, theirs[k]]) for k, v in self._parts().items()})

    def astuple(self) -> tuple[Tensor, ...]:
        return tuple(v for v in self._parts().values() if v is not None)

    def to(self, device: torch.device) -> EpisodeBatch:
        return self._with(lambda t: t.to(device))


@dataclass(frozen=True)
class EpisodeExecution:
    """What the execution layer needs of an episode besides its decisions (``diffquant.sim.execution``): the bars
    between decisions, and per decision the volatility (``sim.vol_target``) and the betas (a beta-neutral book),
    estimated from the bars before it. The defaults add nothing: today's episodes, bit for bit."""

    period: int = 1  # model.decision_every
    vol_target: float = 0.0  # annual; 0: no risk tensor
    vol_window: int = 48
    timeframe_minutes: int = 30
    beta_window: int = 0  # 0: no beta tensor

    @classmethod
    def of(cls, cfg: Config) -> EpisodeExecution:
        p = cfg.model.portfolio
        beta = p.beta_window if cfg.model.kind == "portfolio" and p.neutral == "beta" else 0
        s = cfg.sim
        return cls(cfg.model.decision_every, s.vol_target, s.vol_window, cfg.data.timeframe_minutes, beta)

    def length(self, context: int, horizon: int) -> int:
        """Bars in an episode of ``horizon`` decisions: the context, then ``horizon`` x ``period`` scored bars."""
        return context + horizon * self.period

    def tensors(self, close: np.ndarray, context: int, present: np.ndarray | None = None) -> dict[str, Tensor]:
        """``risk`` and ``beta`` (as configured) from the episodes' float64 closes (S, L) or a book's (S, L, A), at
        the decisions' bars context - 1 + t P; ``present`` (S, A) masks a book's assets out of the market."""
        out: dict[str, Tensor] = {}
        if not (self.vol_target or self.beta_window):
            return out
        horizon = (close.shape[1] - context) // self.period
        rows = context - 1 + self.period * np.arange(horizon)  # (H,) the decision bars
        logs = log_returns(close, time_axis=1)  # (S, L[, A])

        def windows(w: int) -> np.ndarray:  # (S * H, w[, A]) the returns up to each decision bar
            picked = logs[:, rows[:, None] + np.arange(1 - w, 1)]  # (S, H, w[, A])
            return picked.reshape(-1, *picked.shape[2:])

        s = len(close)
        if self.vol_target:
            moment = second_moment(windows(self.vol_window))
            moment = risk_units(moment, self.vol_target, self.timeframe_minutes)
            out["risk"] = torch.as_tensor(moment.reshape(s, horizon, *moment.shape[1:]), dtype=torch.float32)
        if self.beta_window:
            logs_w = windows(self.beta_window)
            have = np.broadcast_to(np.repeat(present, horizon, axis=0)[:, None, :], logs_w.shape)
            beta = market_betas(logs_w, have).reshape(s, horizon, -1)
            out["beta"] = torch.as_tensor(beta, dtype=torch.float32)
        return out


EVERY_BAR = EpisodeExecution()  # today's episodes: a decision every bar, no estimates


def context_volatility(close: np.ndarray, context: int) -> np.ndarray:
    """(S,) population std of the log returns between the closes of bars 0 .. context-1 of each sample.

    Causal: the episode's first decision is taken at bar context-1's close, so this uses only what that decision
    already knows, nothing of the scored bars. The log returns of the mirrored market are these negated, so the
    mirror image has the same value.
    """
    return np.diff(np.log(np.asarray(close, dtype=np.float64)[:, :context]), axis=1).std(axis=1)


def episodes_from_arrays(
    features: np.ndarray,
    close: np.ndarray,
    funding: np.ndarray,
    context: int,
    execution: EpisodeExecution = EVERY_BAR,
) -> EpisodeBatch:
    """Samples (S, L, F), (S, L), (S, L) -> an EpisodeBatch scoring bars context .. L-1 (and the execution's
    per-decision estimates; its period must fit the samples)."""
    close = np.asarray(close, dtype=np.float64)
    returns = bar_returns(close[:, context - 1 :])  # (S, H) scored bars context ..
    return EpisodeBatch(
        torch.as_tensor(features, dtype=torch.float32),
        torch.as_tensor(returns, dtype=torch.float32),
        torch.as_tensor(funding[:, context:], dtype=torch.float32),
        torch.as_tensor(context_volatility(close, context), dtype=torch.float32),
        **execution.tensors(close, context),
    )


def mirror(batch: EpisodeBatch, perm: Tensor, sign: Tensor) -> EpisodeBatch:
    """The same episodes in the market reflected in log-price (P -> 1/P, up to scale).

    Log-return features negate (high and low swap: the reflected high is the reflected low), scale-free channels
    stay, every return r becomes 1/(1+r) - 1 (its log negates), and funding flips sign (in the reflected market
    longs and shorts trade places). Positions are scored *as they are*: the sign-equivariant policy p(mirror x) =
    -p(x) then earns, to first order in r, what it earns on the original (upstream also negated positions, which
    rewarded the sign-invariant policy instead: docs/upstream.md, "Defects fixed" item 2).
    """
    return EpisodeBatch(
        batch.features[..., perm] * sign,
        -batch.returns / (1.0 + batch.returns),  # = 1 / (1 + r) - 1 without the cancellation in float32
        -batch.funding,
        batch.context_vol,  # the std of negated log returns
        batch.present,
        batch.risk,  # second moments of negated log returns
        batch.beta,  # every log return negated, the market's too
    )


def episode_pnl(
    model: PolicyNetwork | PortfolioPolicy,
    batch: EpisodeBatch,
    sim: SimConfig,
    horizon: int,
    full_bptt: bool,
    reference: bool = False,
) -> tuple[Tensor, Tensor]:
    """Decisions (B, H) (a portfolio's weights (B, H, A)) and the book's net PnL (B, H P) of a batch of episodes;
    ``reference`` uses the step-by-step rollout. The decisions go through the execution layer (cadence, volatility
    target, cap, band: ``execute_decisions``) and then the execution lag, as the walk-forward engine's do."""
    rollout = model.rollout_reference if reference else model.rollout
    if batch.present is None:
        decisions, _ = rollout(batch.features, horizon, full_bptt)
    else:
        decisions, _ = rollout(batch.features, horizon, full_bptt, batch.present, batch.beta)
    band = getattr(model, "band", None)
    targets = execute_decisions(
        decisions,
        sim,
        period=getattr(model, "decision_every", 1),
        risk=batch.risk,
        band=sim.band if band is None else band(),
        leverage=getattr(model, "leverage", None),
    )
    held = held_positions(targets, sim.execution_lag_bars, time_axis=1)
    return decisions, simulate(held, batch.returns, batch.funding, sim).book_net


def batch_loss(
    model: PolicyNetwork | PortfolioPolicy,
    batch: EpisodeBatch,
    objective: Objective,
    sim: SimConfig,
    horizon: int,
    full_bptt: bool,
    mirrored: EpisodeBatch | None = None,
    reference: bool = False,
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Loss of a batch (and its mirror image, averaged 50/50 when given); also the original net PnL for logging.

    Original and mirrored episodes go through the model in one call.
    """
    both = batch if mirrored is None else batch.cat(mirrored)
    decisions, pnl = episode_pnl(model, both, sim, horizon, full_bptt, reference)
    b = len(batch)
    loss, terms = objective(pnl[:b], decisions[:b], both.context_vol[:b])
    if mirrored is not None:
        loss_m, _ = objective(pnl[b:], decisions[b:], both.context_vol[b:])
        loss = 0.5 * (loss + loss_m)
    return loss, terms, pnl[:b].detach()
