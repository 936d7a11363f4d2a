"""Drawdown-based ratios: Calmar-like (mean over a smooth maximum drawdown) and CDaR (mean over the drawdown tail).

Both divide the pooled per-bar mean of ``pnl`` (B episodes x T bars), like :func:`~diffquant.sim.losses.sharpe_ratio`,
by a drawdown measure of each episode's log-equity whose running peak starts at 0 (the episode's start is a peak,
so a loss from the first bar is a drawdown). A flat book (``pnl`` all 0) has no drawdown and a zero mean: both
ratios are exactly 0 there, not NaN, because the denominators keep ``eps`` (and the smooth maximum stays positive).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def drawdown_path(pnl: Tensor) -> Tensor:
    """Per-bar gap (B, T) between the running peak of log-equity (starting at 0) and log-equity; >= 0."""
    log_equity = torch.cumsum(torch.log1p(pnl), dim=1)
    peak = torch.cummax(torch.clamp_min(log_equity, 0.0), dim=1).values
    return peak - log_equity


def smooth_max_drawdown(pnl: Tensor, temperature: float) -> Tensor:
    """Per-episode (B,) smooth maximum drawdown ``logsumexp(k * dd) / k`` with ``k = temperature``.

    The hard maximum passes its gradient to one bar only and jumps between bars; the log-sum-exp spreads it over the
    bars near the worst, with softmax weights. Since ``exp(k max) <= sum_t exp(k dd_t) <= T exp(k max)``, it bounds
    the hard maximum from above: ``max <= smooth <= max + log(T) / k``, and tends to it as ``k`` grows.
    """
    return torch.logsumexp(temperature * drawdown_path(pnl), dim=1) / temperature


def calmar_ratio(pnl: Tensor, temperature: float, eps: float) -> Tensor:
    """Pooled per-bar mean over the episodes' mean smooth maximum drawdown (plus ``eps``); 0 on a flat book."""
    return pnl.mean() / (smooth_max_drawdown(pnl, temperature).mean() + eps)


def tail_count(n: int, alpha: float) -> int:
    """How many of ``n`` values form the worst ``1 - alpha`` share: ``ceil((1 - alpha) n)``, at least 1.

    The product is rounded first so that float error does not add one (``(1 - 0.95) * 20`` is 1.0000000000000009).
    """
    return max(1, math.ceil(round((1.0 - alpha) * n, 6)))


def cdar(pnl: Tensor, alpha: float) -> Tensor:
    """Conditional drawdown at risk: the mean of the worst ``1 - alpha`` share of the per-bar drawdowns, pooled over
    B x T.

    ``topk`` picks the tail, and its gradient reaches exactly the selected bars, as the sorted tail of an empirical
    CDaR would; the selection itself only changes where two drawdowns cross.
    """
    dd = drawdown_path(pnl).flatten()
    return torch.topk(dd, tail_count(dd.numel(), alpha)).values.mean()


def cdar_ratio(pnl: Tensor, alpha: float, eps: float) -> Tensor:
    """Pooled per-bar mean over CDaR (plus ``eps``); 0 on a flat book."""
    return pnl.mean() / (cdar(pnl, alpha) + eps)
