"""Training objectives on the simulator's per-bar PnL: sharpe, sortino and the hybrid with regularisers.

Shapes: B episodes, T bars. Ratios pool all B x T bars of a batch (upstream's choice: a batch is one sample of the
return distribution) and are per bar, not annualised.

Fixes against upstream (docs/upstream.md, "Defects fixed" items 1 and 10), each covered by a test:
- an exactly-flat policy earns exactly 0 (the simulator's idle cost is 0), so -Sharpe is 0 there, not +70;
- the drawdown's running maximum starts at zero log-equity, so a loss from the episode's start is a drawdown;
- the terminal and turnover terms use the same zero-at-zero smooth |x| as the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffquant.config import LossConfig
from diffquant.sim.simulator import smooth_abs


def sharpe_ratio(pnl: Tensor, eps: float) -> Tensor:
    """Pooled per-bar Sharpe mean / (std + eps), unbiased std."""
    return pnl.mean() / (pnl.std() + eps)


def sortino_ratio(pnl: Tensor, eps: float) -> Tensor:
    """Pooled per-bar Sortino: mean over the downside deviation sqrt(mean(min(x, 0)^2)) (target 0, all bars)."""
    downside = torch.sqrt(torch.relu(-pnl).pow(2).mean() + eps)
    return pnl.mean() / (downside + eps)


def drawdown(pnl: Tensor) -> Tensor:
    """Mean gap between the running peak of log-equity (starting at 0) and log-equity, over (B, T)."""
    log_equity = torch.cumsum(torch.log1p(pnl), dim=1)
    peak = torch.cummax(torch.clamp_min(log_equity, 0.0), dim=1).values
    return (peak - log_equity).mean()


def turnover(decisions: Tensor, eps: float) -> Tensor:
    """Mean smooth |change| between consecutive decisions (the entry from flat is not counted, as in upstream)."""
    return smooth_abs(torch.diff(decisions, dim=1), eps).mean()


def terminal(decisions: Tensor, eps: float) -> Tensor:
    """Mean smooth |last decision|: pushes episodes to end near flat."""
    return smooth_abs(decisions[:, -1], eps).mean()


def flat_share(decisions: Tensor, flat_eps: float, flat_k: float) -> Tensor:
    """Soft share of decisions with |position| < flat_eps (a sigmoid of slope flat_k)."""
    return torch.sigmoid(flat_k * (flat_eps - decisions.abs())).mean()


@dataclass(frozen=True)
class Objective:
    """The configured loss: ``objective(pnl, decisions) -> (loss, terms)`` with ``terms`` for logging."""

    cfg: LossConfig
    smooth_eps: float

    def __call__(self, pnl: Tensor, decisions: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        c = self.cfg
        ratio = sortino_ratio if (c.type == "sortino" or (c.type == "hybrid" and c.core == "sortino")) else sharpe_ratio
        core = -ratio(pnl, c.eps)
        if c.type != "hybrid":
            return core, {"core": core}
        terms = {
            "core": core,
            "turnover": turnover(decisions, self.smooth_eps),
            "drawdown": drawdown(pnl),
            "terminal": terminal(decisions, self.smooth_eps),
            "flat": (flat_share(decisions, c.flat_eps, c.flat_k) - c.flat_target) ** 2,
            "bias": decisions.mean().abs(),
        }
        weights = {
            "core": c.lambda_sharpe,
            "turnover": c.lambda_turnover,
            "drawdown": c.lambda_drawdown,
            "terminal": c.lambda_terminal,
            "flat": c.lambda_flat,
            "bias": c.lambda_bias,
        }
        return sum(weights[k] * v for k, v in terms.items()), terms

    def __repr__(self) -> str:
        c = self.cfg
        if c.type != "hybrid":
            return f"-{c.type}"
        return (
            f"{c.lambda_sharpe}*(-{c.core}) + {c.lambda_turnover}*turnover + {c.lambda_drawdown}*drawdown + "
            f"{c.lambda_terminal}*terminal + {c.lambda_flat}*(flat_share - {c.flat_target})^2 + "
            f"{c.lambda_bias}*|mean(position)|"
        )
