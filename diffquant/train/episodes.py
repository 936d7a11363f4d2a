"""Training episodes as tensors, their mirror images, and the loss of a batch of episodes.

An episode is one training sample of ctx + H bars: H decisions at bars ctx-1 .. ctx+H-2, scored over the H bars
ctx .. ctx+H-1 under the execution lag (docs/design_notes.md). Returns are computed once from float64 prices, and
so is each episode's context volatility (the market's regime before its first decision, for the regime-weighted loss).
A portfolio's episode holds A assets on one clock (features (B, ctx + H, A, F), returns and funding (B, H, A)) and
``present`` (B, A) marks the assets with data in it (:mod:`diffquant.train.book_episodes` cuts them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffquant.config import SimConfig
from diffquant.model.policy import PolicyNetwork
from diffquant.model.portfolio import PortfolioPolicy
from diffquant.sim.losses import Objective
from diffquant.sim.simulator import bar_returns, held_positions, simulate


@dataclass(frozen=True)
class EpisodeBatch:
    features: Tensor  # (B, ctx + H, F) float32; a portfolio's (B, ctx + H, A, F), NaN where an asset is absent
    returns: Tensor  # (B, H) simple returns of the H scored bars; a portfolio's (B, H, A), 0 where absent
    funding: Tensor  # (B, H) funding rate of the H scored bars; a portfolio's (B, H, A), 0 where absent
    context_vol: Tensor  # (B,) realised volatility of the context bars (context_volatility; a book: present assets')
    present: Tensor | None = None  # a portfolio's (B, A) bool: the asset has every bar of the episode

    def __len__(self) -> int:
        return self.features.shape[0]

    def index(self, idx: Tensor) -> EpisodeBatch:
        return EpisodeBatch(*(t[idx] for t in self.astuple()))

    def cat(self, other: EpisodeBatch) -> EpisodeBatch:
        return EpisodeBatch(*(torch.cat(pair) for pair in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[Tensor, ...]:
        fields = (self.features, self.returns, self.funding, self.context_vol)
        return fields + (() if self.present is None else (self.present,))

    def to(self, device: torch.device) -> EpisodeBatch:
        return EpisodeBatch(*(t.to(device) for t in self.astuple()))


def context_volatility(close: np.ndarray, context: int) -> np.ndarray:
    """(S,) population std of the log returns between the closes of bars 0 .. context-1 of each sample.

    Causal: the episode's first decision is taken at bar context-1's close, so this uses only what that decision
    already knows, nothing of the scored bars. The log returns of the mirrored market are these negated, so the
    mirror image has the same value.
    """
    return np.diff(np.log(np.asarray(close, dtype=np.float64)[:, :context]), axis=1).std(axis=1)


def episodes_from_arrays(features: np.ndarray, close: np.ndarray, funding: np.ndarray, context: int) -> EpisodeBatch:
    """Samples (S, L, F), (S, L), (S, L) -> an EpisodeBatch scoring bars context .. L-1."""
    returns = bar_returns(np.asarray(close, dtype=np.float64)[:, context - 1 :])  # (S, H) scored bars context ..
    return EpisodeBatch(
        torch.as_tensor(features, dtype=torch.float32),
        torch.as_tensor(returns, dtype=torch.float32),
        torch.as_tensor(funding[:, context:], dtype=torch.float32),
        torch.as_tensor(context_volatility(close, context), dtype=torch.float32),
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
    )


def episode_pnl(
    model: PolicyNetwork | PortfolioPolicy,
    batch: EpisodeBatch,
    sim: SimConfig,
    horizon: int,
    full_bptt: bool,
    reference: bool = False,
) -> tuple[Tensor, Tensor]:
    """Decisions (B, H) (a portfolio's weights (B, H, A)) and the book's net PnL (B, H) of a batch of episodes;
    ``reference`` uses the step-by-step rollout."""
    rollout = model.rollout_reference if reference else model.rollout
    if batch.present is None:
        decisions, _ = rollout(batch.features, horizon, full_bptt)
    else:
        decisions, _ = rollout(batch.features, horizon, full_bptt, batch.present)
    held = held_positions(decisions, sim.execution_lag_bars, time_axis=1)
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
