"""The one mark-to-market simulator, as tensor ops: training differentiates through it, walk-forward calls it exactly.

Shapes: B episodes (or 1 series), T bars, and for a portfolio A assets. ``held[:, j]`` is the position held during
bar j (see docs/design_notes.md for how decisions map to held positions under the execution lag): (B, T) for one
asset, (B, T, A) weights for a portfolio. A portfolio is priced asset by asset with the same formulas (each asset's
own return, funding and cost rate); its per-bar return is the sum over the assets (``book_total``), since a weight
is the fraction of equity held in that asset during the bar. One asset is not a special case: (B, T) and (B, T, 1)
give the same numbers, bit for bit.

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
    """Per bar (and per asset for a portfolio): every field has ``held``'s shape, (B, T) or (B, T, A)."""

    gross: Tensor  # position x return
    commission: Tensor  # commission + slippage + impact, >= 0
    funding: Tensor  # funding paid (negative = received)
    net: Tensor  # gross - commission - funding
    trades: Tensor  # position change at the start of each bar

    @property
    def book_net(self) -> Tensor:
        """(B, T) net return of the whole book: the assets' nets summed (one asset's net as it is)."""
        return book_total(self.net)


def smooth_abs(x: Tensor, eps: float) -> Tensor:
    """sqrt(x^2 + eps) - sqrt(eps): smooth at 0, exactly 0 there, |x| - O(sqrt(eps)) far from it.

    sqrt(eps) is rounded in x's dtype, as the first term is: with the float64 ``eps**0.5`` an idle float32 bar cost
    +-1e-11 for eps like 1e-8, 2e-8 or 3e-6 (negative commission, a flat book earning != 0).
    """
    root = torch.sqrt(torch.tensor(eps, dtype=x.dtype)).item()
    return torch.sqrt(x * x + eps) - root


def book_total(x: Tensor) -> Tensor:
    """A per-asset quantity (B, T, A) summed over the assets, per bar; one asset's (B, T) as it is."""
    return x if x.dim() == 2 else x.sum(dim=-1)


def gross_exposure(held: Tensor) -> Tensor:
    """sum_i |w_i| per bar, (B, T): what a portfolio's leverage limit bounds (|x| for one asset)."""
    return book_total(held.abs())


def bar_returns(close: ArrayOrTensor, time_axis: int = -1) -> ArrayOrTensor:
    """Simple returns of consecutive closes along ``time_axis``: T+1 closes -> T returns; r_j = c_{j+1} / c_j - 1.

    The one place returns are made from prices: training episodes and walk-forward both call it on float64 closes
    (walk-forward then zeroes the returns across gaps, which episodes never contain). A portfolio's closes
    (B, T+1, A) take ``time_axis=1``.
    """
    before = (slice(None),) * (time_axis % close.ndim)
    return close[(*before, slice(1, None))] / close[(*before, slice(None, -1))] - 1.0


def held_positions(decisions: Tensor, lag: int, time_axis: int = -1) -> Tensor:
    """Positions held from decisions taken at the closes of T consecutive bars (time along ``time_axis``).

    The one map from decisions to held bars: the decision of bar k is executed at the close of bar k + lag and held
    during bar k + lag + 1. Column t of the result is the bar after decision t's bar; it holds decision t - lag, and
    the first ``lag`` columns (no decision inside the span) are flat. In an episode the last ``lag`` decisions fall
    past its end; walk-forward passes ``lag`` decisions from before the quarter and drops the first ``lag`` columns.
    A portfolio's weights (B, T, A) take ``time_axis=1``.
    """
    if lag == 0:
        return decisions
    axis = time_axis % decisions.dim()
    flat = decisions.new_zeros(*decisions.shape[:axis], lag, *decisions.shape[axis + 1 :])
    return torch.cat([flat, decisions.narrow(axis, 0, decisions.shape[axis] - lag)], dim=axis)


def simulate(
    held: Tensor,
    returns: Tensor,
    funding_rate: Tensor | None,
    cfg: SimConfig,
    *,
    prev_position: Tensor | None = None,
    exact: bool = False,
    cost_rate: Tensor | None = None,
    leverage: float | None = None,
) -> SimResult:
    """Per-bar PnL of holding ``held`` (B, T) over bars with simple ``returns`` (B, T) (see ``bar_returns``).

    A portfolio passes weights, returns and funding as (B, T, A) and ``prev_position`` as (B, A).
    ``funding_rate`` has ``held``'s shape: the rate charged during each bar (ignored when ``cfg.funding`` is off).
    ``prev_position`` (B,) is the position held before the first bar (flat by default). Returns come in
    precomputed so callers derive them once from float64 prices (and walk-forward can zero those across gaps).
    ``cost_rate`` (A,) gives each asset its own commission + slippage (default ``cfg.cost_rate`` for all).
    ``leverage``, when given, refuses a book whose gross exposure sum_i |w_i| exceeds it at any bar (beyond a few
    rounding units: the portfolio policy meets the limit by construction, up to rounding).
    """
    if leverage is not None:
        _check_leverage(held, leverage)
    before = held.new_zeros(held.shape[0], 1, *held.shape[2:]) if prev_position is None else prev_position
    trades = torch.diff(held, dim=1, prepend=before.reshape(held.shape[0], 1, *held.shape[2:]))
    size = trades.abs() if exact else smooth_abs(trades, cfg.smooth_abs_eps)
    commission = size * (cfg.cost_rate if cost_rate is None else cost_rate)
    if cfg.impact_eta > 0:
        commission = commission + cfg.impact_eta * trades * trades
    gross = held * returns
    funding = held * funding_rate if (cfg.funding and funding_rate is not None) else torch.zeros_like(gross)
    return SimResult(
        gross=gross, commission=commission, funding=funding, net=gross - commission - funding, trades=trades
    )


def _check_leverage(held: Tensor, leverage: float) -> None:
    """Raise when some bar's gross exposure exceeds ``leverage`` by more than a few rounding units."""
    exposure = gross_exposure(held.detach())
    n_assets = held.shape[2] if held.dim() == 3 else 1
    slack = leverage * 4 * n_assets * torch.finfo(held.dtype).eps
    if bool((exposure > leverage + slack).any()):
        b, t = divmod(int(exposure.argmax()), exposure.shape[1])
        raise ValueError(
            f"gross exposure {exposure[b, t].item():.6g} at episode {b}, bar {t} exceeds the leverage {leverage}"
        )
