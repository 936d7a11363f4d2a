"""The one mark-to-market simulator, as tensor ops: training differentiates through it, walk-forward calls it exactly.

Shapes: B episodes (or 1 series), T bars. ``held[:, j]`` is the position held during bar j (see
docs/design_notes.md for how decisions map to held positions under the execution lag).

.. math::

    r_j = c_{j+1} / c_j - 1,\\quad \\Delta_j = x_j - x_{j-1}\\ (x_{-1} = x_0^{prev})

    \\text{gross}_j = x_j r_j,\\quad \\text{commission}_j = k\\,(\\sqrt{\\Delta_j^2 + \\epsilon} - \\sqrt{\\epsilon})
    + \\eta \\Delta_j^2,\\quad \\text{funding}_j = x_j f_j

The smooth |Δ| keeps the cost differentiable at Δ = 0; subtracting sqrt(ε) makes an idle bar cost exactly zero,
so a flat book earns exactly zero (upstream charged 7e-7 per idle bar: docs/upstream.md, "Defects fixed"
item 1). ``exact=True`` uses the plain |Δ| for
reporting. Funding f_j > 0 makes longs pay and shorts receive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from diffquant.config import SimConfig

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, Tensor)


@dataclass(frozen=True)
class SimResult:
    gross: Tensor  # (B, T) position x return
    commission: Tensor  # (B, T) commission + slippage + impact, >= 0
    funding: Tensor  # (B, T) funding paid (negative = received)
    net: Tensor  # (B, T) gross - commission - funding
    trades: Tensor  # (B, T) position change at the start of each bar


def smooth_abs(x: Tensor, eps: float) -> Tensor:
    """sqrt(x^2 + eps) - sqrt(eps): smooth at 0, exactly 0 there, |x| - O(sqrt(eps)) far from it.

    sqrt(eps) is rounded in x's dtype, as the first term is: with the float64 ``eps**0.5`` an idle float32 bar cost
    +-1e-11 for eps like 1e-8, 2e-8 or 3e-6 (negative commission, a flat book earning != 0).
    """
    root = torch.sqrt(torch.tensor(eps, dtype=x.dtype)).item()
    return torch.sqrt(x * x + eps) - root


def bar_returns(close: ArrayOrTensor) -> ArrayOrTensor:
    """Simple returns of consecutive closes along the last axis: (..., T+1) -> (..., T); r_j = c_{j+1} / c_j - 1.

    The one place returns are made from prices: training episodes and walk-forward both call it on float64 closes
    (walk-forward then zeroes the returns across gaps, which episodes never contain).
    """
    return close[..., 1:] / close[..., :-1] - 1.0


def held_positions(decisions: Tensor, lag: int) -> Tensor:
    """Positions held (..., T) from decisions (..., T) taken at the closes of T consecutive bars.

    The one map from decisions to held bars: the decision of bar k is executed at the close of bar k + lag and held
    during bar k + lag + 1. Column t of the result is the bar after decision t's bar; it holds decision t - lag, and
    the first ``lag`` columns (no decision inside the span) are flat. In an episode the last ``lag`` decisions fall
    past its end; walk-forward passes ``lag`` decisions from before the quarter and drops the first ``lag`` columns.
    """
    if lag == 0:
        return decisions
    flat = decisions.new_zeros(*decisions.shape[:-1], lag)
    return torch.cat([flat, decisions[..., :-lag]], dim=-1)


def simulate(
    held: Tensor,
    returns: Tensor,
    funding_rate: Tensor | None,
    cfg: SimConfig,
    *,
    prev_position: Tensor | None = None,
    exact: bool = False,
) -> SimResult:
    """Per-bar PnL of holding ``held`` (B, T) over bars with simple ``returns`` (B, T) (see ``bar_returns``).

    ``funding_rate`` (B, T) is the rate charged during each bar (ignored when ``cfg.funding`` is off).
    ``prev_position`` (B,) is the position held before the first bar (flat by default). Returns come in
    precomputed so callers derive them once from float64 prices (and walk-forward can zero those across gaps).
    """
    before = held.new_zeros(held.shape[0], 1) if prev_position is None else prev_position.reshape(-1, 1)
    trades = torch.diff(held, dim=1, prepend=before)
    size = trades.abs() if exact else smooth_abs(trades, cfg.smooth_abs_eps)
    commission = size * cfg.cost_rate
    if cfg.impact_eta > 0:
        commission = commission + cfg.impact_eta * trades * trades
    gross = held * returns
    funding = held * funding_rate if (cfg.funding and funding_rate is not None) else torch.zeros_like(gross)
    return SimResult(
        gross=gross, commission=commission, funding=funding, net=gross - commission - funding, trades=trades
    )
