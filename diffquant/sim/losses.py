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


def episode_mean(x: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean of ``x`` (B, ...) over all its values; with per-episode ``weights`` (B,), episode b's values count w_b
    times (every episode has the same number of values, so this is mean_b(w_b * mean of episode b))."""
    if weights is None:
        return x.mean()
    return (weights.reshape(-1, *[1] * (x.dim() - 1)) * x).mean()


def drawdown(pnl: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean gap between the running peak of log-equity (starting at 0) and log-equity, over (B, T)."""
    return episode_mean(drawdown_path(pnl), weights)


def turnover(decisions: Tensor, eps: float, weights: Tensor | None = None) -> Tensor:
    """Mean smooth |change| between consecutive decisions (the entry from flat is not counted, as in upstream)."""
    return episode_mean(book_total(smooth_abs(torch.diff(decisions, dim=1), eps)), weights)


def turnover_band(decisions: Tensor, eps: float, low: float, high: float, weights: Tensor | None = None) -> Tensor:
    """Mean over episodes of relu(low - x)^2 + relu(x - high)^2, x an episode's mean smooth |change| of decision.

    Unlike ``turnover``, which pushes every episode towards no trading, this leaves any trading pace inside
    [low, high] alone and only pulls episodes that trade too little or too much back to the band.
    """
    x = book_total(smooth_abs(torch.diff(decisions, dim=1), eps)).mean(dim=1)
    return episode_mean(torch.relu(low - x).pow(2) + torch.relu(x - high).pow(2), weights)


def terminal(decisions: Tensor, eps: float, weights: Tensor | None = None) -> Tensor:
    """Mean smooth |last decision| (summed over a portfolio's assets): pushes episodes to end near flat."""
    return episode_mean(book_total(smooth_abs(decisions[:, -1:], eps)), weights)


def regime_weights(context_vol: Tensor, cfg: LossConfig) -> Tensor:
    """Per-episode (B,) factor on the regularisers' lambdas: clip(((vol + eps) / (ref + eps)) ** power, min, max).

    ``context_vol`` is each episode's realised volatility before its first decision (``EpisodeBatch.context_vol``),
    ``ref`` the batch's mean of it or ``loss.regime_vol``. A positive power asks for more caution (less turnover,
    shallower drawdowns) in turbulent regimes and less in calm ones; ``eps`` keeps a flat context finite.
    """
    reference = context_vol.mean() if cfg.regime_reference == "batch" else cfg.regime_vol
    ratio = (context_vol + cfg.eps) / (reference + cfg.eps)
    return torch.clamp(ratio**cfg.regime_power, cfg.regime_min_weight, cfg.regime_max_weight)


def flat_share(decisions: Tensor, flat_eps: float, flat_k: float) -> Tensor:
    """Soft share of decisions with |position| (a portfolio's gross exposure) < flat_eps (a sigmoid of slope flat_k)."""
    return torch.sigmoid(flat_k * (flat_eps - gross_exposure(decisions))).mean()


def net_exposure(decisions: Tensor) -> Tensor:
    """|mean position| (a portfolio's sum_i w_i): pushes the book away from a standing long or short bias."""
    return book_total(decisions).mean().abs()


@dataclass(frozen=True)
class Objective:
    """The configured loss: ``objective(pnl, decisions[, context_vol]) -> (loss, terms)``, ``terms`` for logging.

    With ``loss.regime_power`` set, ``context_vol`` (B,) weighs each episode's regularisers (:func:`regime_weights`).
    """

    cfg: LossConfig
    smooth_eps: float

    def __call__(
        self, pnl: Tensor, decisions: Tensor, context_vol: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        c = self.cfg
        core = -RATIOS[c.core if c.type == "hybrid" else c.type](pnl, c)
        if c.type != "hybrid":
            return core, {"core": core}
        regime = self._regime(context_vol)
        batch = 1.0 if regime is None else regime.mean()  # the pooled terms have no episodes to weight one by one
        terms = {
            "core": core,
            "turnover": turnover(decisions, self.smooth_eps, regime),
            "drawdown": drawdown(pnl, regime),
            "terminal": terminal(decisions, self.smooth_eps, regime),
            "flat": batch * (flat_share(decisions, c.flat_eps, c.flat_k) - c.flat_target) ** 2,
            "bias": batch * net_exposure(decisions),
            "band": turnover_band(decisions, self.smooth_eps, c.band_low, c.band_high, regime),
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

    def _regime(self, context_vol: Tensor | None) -> Tensor | None:
        """The episodes' regime weights, or None when the weighting is off (the loss is then exactly unweighted)."""
        if not self.cfg.regime_power:
            return None
        if context_vol is None:
            raise ValueError("loss.regime_power is set: the objective needs each episode's context volatility")
        return regime_weights(context_vol, self.cfg)

    def __repr__(self) -> str:
        """The formula; a zero-weighted band term and an unset regime weighting are left out, so default runs keep
        the description they had."""
        c = self.cfg
        if c.type != "hybrid":
            return f"-{self._core(c.type)}"
        band = f" + {c.lambda_band}*band[{c.band_low}, {c.band_high}]" if c.lambda_band else ""
        formula = (
            f"{c.lambda_sharpe}*(-{self._core(c.core)}) + {c.lambda_turnover}*turnover + "
            f"{c.lambda_drawdown}*drawdown + {c.lambda_terminal}*terminal + "
            f"{c.lambda_flat}*(flat_share - {c.flat_target})^2 + {c.lambda_bias}*|mean(position)|{band}"
        )
        if not c.regime_power:
            return formula
        ref = "batch" if c.regime_reference == "batch" else c.regime_vol
        return (
            f"{formula}; regularisers x clip((vol/{ref})^{c.regime_power}, "
            f"{c.regime_min_weight}, {c.regime_max_weight})"
        )

    def _core(self, name: str) -> str:
        """A ratio's name with the setting that shapes it (the drawdown ratios have one each)."""
        extra = {"calmar": f"(k={self.cfg.dd_temperature})", "cdar": f"(alpha={self.cfg.cdar_alpha})"}
        return name + extra.get(name, "")
