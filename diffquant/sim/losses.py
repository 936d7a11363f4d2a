"""Training objectives on the simulator's per-bar PnL: sharpe, sortino, calmar, cdar and the hybrid with regularisers.

Shapes: B episodes, T bars. Ratios pool all B x T bars of a batch (upstream's choice: a batch is one sample of the
return distribution) and are per bar, not annualised.

A portfolio passes its book's per-bar net return (B, T) (``SimResult.book_net``) and its weights (B, T, A) as the
decisions: the ratios and the drawdown read the book's return as they read one asset's, and each regulariser reads
the book's per-bar total (``book_total``): turnover sum_i |dw_i|, gross exposure sum_i |w_i| for the terminal and
flat terms, net exposure sum_i w_i for the bias. With one asset every total is that asset's own value, so
(B, T, 1) weights give the one-asset loss bit for bit.

Fixes against upstream (docs/upstream.md, "Defects fixed" items 1 and 10), each covered by a test:
- an exactly-flat policy earns exactly 0 (the simulator's idle cost is 0), so -Sharpe is 0 there, not +70;
- the drawdown's running maximum starts at zero log-equity, so a loss from the episode's start is a drawdown;
- the terminal and turnover terms use the same zero-at-zero smooth |x| as the simulator.

The drawdown-based ratios (calmar, cdar) live in :mod:`diffquant.sim.drawdown_losses`; docs/losses.md lists them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffquant.config import LossConfig
from diffquant.sim.drawdown_losses import calmar_ratio, cdar_ratio, drawdown_path
from diffquant.sim.simulator import book_total, gross_exposure, smooth_abs


def sharpe_ratio(pnl: Tensor, eps: float) -> Tensor:
    """Pooled per-bar Sharpe mean / (std + eps), unbiased std."""
    return pnl.mean() / (pnl.std() + eps)


def sortino_ratio(pnl: Tensor, eps: float) -> Tensor:
    """Pooled per-bar Sortino: mean over the downside deviation sqrt(mean(min(x, 0)^2)) (target 0, all bars)."""
    downside = torch.sqrt(torch.relu(-pnl).pow(2).mean() + eps)
    return pnl.mean() / (downside + eps)


RATIOS: dict[str, Callable[[Tensor, LossConfig], Tensor]] = {
    "sharpe": lambda pnl, c: sharpe_ratio(pnl, c.eps),
    "sortino": lambda pnl, c: sortino_ratio(pnl, c.eps),
    "calmar": lambda pnl, c: calmar_ratio(pnl, c.dd_temperature, c.eps),
    "cdar": lambda pnl, c: cdar_ratio(pnl, c.cdar_alpha, c.eps),
}


def drawdown(pnl: Tensor) -> Tensor:
    """Mean gap between the running peak of log-equity (starting at 0) and log-equity, over (B, T)."""
    return drawdown_path(pnl).mean()


def turnover(decisions: Tensor, eps: float) -> Tensor:
    """Mean smooth |change| between consecutive decisions (the entry from flat is not counted, as in upstream)."""
    return book_total(smooth_abs(torch.diff(decisions, dim=1), eps)).mean()


def turnover_band(decisions: Tensor, eps: float, low: float, high: float) -> Tensor:
    """Mean over episodes of relu(low - x)^2 + relu(x - high)^2, x an episode's mean smooth |change| of decision.

    Unlike ``turnover``, which pushes every episode towards no trading, this leaves any trading pace inside
    [low, high] alone and only pulls episodes that trade too little or too much back to the band.
    """
    x = book_total(smooth_abs(torch.diff(decisions, dim=1), eps)).mean(dim=1)
    return (torch.relu(low - x).pow(2) + torch.relu(x - high).pow(2)).mean()


def terminal(decisions: Tensor, eps: float) -> Tensor:
    """Mean smooth |last decision| (summed over a portfolio's assets): pushes episodes to end near flat."""
    return book_total(smooth_abs(decisions[:, -1:], eps)).mean()


def flat_share(decisions: Tensor, flat_eps: float, flat_k: float) -> Tensor:
    """Soft share of decisions with |position| (a portfolio's gross exposure) < flat_eps (a sigmoid of slope flat_k)."""
    return torch.sigmoid(flat_k * (flat_eps - gross_exposure(decisions))).mean()


def net_exposure(decisions: Tensor) -> Tensor:
    """|mean position| (a portfolio's sum_i w_i): pushes the book away from a standing long or short bias."""
    return book_total(decisions).mean().abs()


@dataclass(frozen=True)
class Objective:
    """The configured loss: ``objective(pnl, decisions) -> (loss, terms)`` with ``terms`` for logging."""

    cfg: LossConfig
    smooth_eps: float

    def __call__(self, pnl: Tensor, decisions: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        c = self.cfg
        core = -RATIOS[c.core if c.type == "hybrid" else c.type](pnl, c)
        if c.type != "hybrid":
            return core, {"core": core}
        terms = {
            "core": core,
            "turnover": turnover(decisions, self.smooth_eps),
            "drawdown": drawdown(pnl),
            "terminal": terminal(decisions, self.smooth_eps),
            "flat": (flat_share(decisions, c.flat_eps, c.flat_k) - c.flat_target) ** 2,
            "bias": net_exposure(decisions),
            "band": turnover_band(decisions, self.smooth_eps, c.band_low, c.band_high),
        }
        weights = {
            "core": c.lambda_sharpe,
            "turnover": c.lambda_turnover,
            "drawdown": c.lambda_drawdown,
            "terminal": c.lambda_terminal,
            "flat": c.lambda_flat,
            "bias": c.lambda_bias,
            "band": c.lambda_band,
        }
        return sum(weights[k] * v for k, v in terms.items()), terms

    def __repr__(self) -> str:
        """The formula; a zero-weighted band term is left out so default runs keep the description they had."""
        c = self.cfg
        if c.type != "hybrid":
            return f"-{self._core(c.type)}"
        band = f" + {c.lambda_band}*band[{c.band_low}, {c.band_high}]" if c.lambda_band else ""
        return (
            f"{c.lambda_sharpe}*(-{self._core(c.core)}) + {c.lambda_turnover}*turnover + "
            f"{c.lambda_drawdown}*drawdown + {c.lambda_terminal}*terminal + "
            f"{c.lambda_flat}*(flat_share - {c.flat_target})^2 + {c.lambda_bias}*|mean(position)|{band}"
        )

    def _core(self, name: str) -> str:
        """A ratio's name with the setting that shapes it (the drawdown ratios have one each)."""
        extra = {"calmar": f"(k={self.cfg.dd_temperature})", "cdar": f"(alpha={self.cfg.cdar_alpha})"}
        return name + extra.get(name, "")
