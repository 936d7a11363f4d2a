"""The scorer: positions through the one walk-forward engine, with the same costs and metrics, and the cost sweep.

Used identically by validation during training, threshold search, evaluation and the baselines.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from diffquant.config import Hysteresis, SimConfig
from diffquant.evaluate.hysteresis import apply_hysteresis
from diffquant.evaluate.metrics import compute_metrics
from diffquant.evaluate.walk_forward import (
    Decisions,
    SeriesLike,
    WalkForwardResult,
    constant_positions,
    policy_decisions,
    walk_forward,
)
from diffquant.model.policy import PolicyNetwork


@dataclass(frozen=True)
class Scorer:
    """Everything a walk-forward needs besides the positions: costs, timing and the annualisation."""

    sim: SimConfig
    timeframe_minutes: int
    days_per_year: int

    def executed(
        self, series: SeriesLike, decisions: Decisions, hysteresis: Hysteresis
    ) -> tuple[WalkForwardResult, dict[str, float]]:
        """Hysteresis on the policy's raw decisions, then walk-forward and metrics."""
        executed = apply_hysteresis(decisions.raw, hysteresis)
        return self.positions(series, executed, decisions)

    def policy(
        self, model: PolicyNetwork, series: SeriesLike, hysteresis: Hysteresis
    ) -> tuple[WalkForwardResult, dict[str, float]]:
        return self.executed(series, policy_decisions(model, series), hysteresis)

    def constant(
        self, series: SeriesLike, position: float, vol_target: float = 0.0
    ) -> tuple[WalkForwardResult, dict[str, float]]:
        """Buy-and-hold (1.0), flat (0.0) or always-short (-1.0) through the same engine and costs, held as it is
        (``sim.plain``: no band, no volatility target) or scaled to ``vol_target`` (annual; its targeted version)."""
        scorer = self.vol_targeted(vol_target) if vol_target else self.plain
        return scorer.positions(series, constant_positions(series, position))

    @property
    def plain(self) -> Scorer:
        """The same scorer without the band and the volatility target (``SimConfig.plain``)."""
        return replace(self, sim=self.sim.plain)

    def vol_targeted(self, annual: float) -> Scorer:
        """The same scorer with the book scaled to ``annual`` volatility (no band): a baseline's targeted version."""
        return replace(self, sim=replace(self.sim.plain, vol_target=annual))

    def positions(
        self, series: SeriesLike, executed: np.ndarray, decisions: Decisions | None = None
    ) -> tuple[WalkForwardResult, dict[str, float]]:
        """Executed decisions (N,) through the engine; ``decisions`` (raw, gate) are only recorded, and their
        learned band width, if any, is the one traded."""
        raw, gate, band = (None, None, None) if decisions is None else (decisions.raw, decisions.gate, decisions.band)
        result = walk_forward(series, executed, self.sim, raw, gate, band)
        return result, compute_metrics(result.record, self.timeframe_minutes, self.days_per_year)

    def at_cost(self, multiplier: float) -> Scorer:
        """The same scorer with commission, slippage and market impact scaled by ``multiplier``."""
        s = self.sim
        sim = replace(
            s,
            commission=s.commission * multiplier,
            slippage=s.slippage * multiplier,
            impact_eta=s.impact_eta * multiplier,
        )
        return replace(self, sim=sim)

    def cost_sweep(
        self, series: SeriesLike, executed: np.ndarray, multipliers: list[float], decisions: Decisions | None = None
    ) -> dict[str, Any]:
        """The same executed decisions re-scored at each cost multiple, and the break-even cost.

        Every bar's net return is linear in the cost multiple m, so the summed net return is S(m) = S(0) - m·C and
        the Sharpe ratio crosses zero at m* = S(0) / (S(0) - S(1)). ``break_even_bps`` is m* times the configured
        per-side cost (commission + slippage) in basis points: what the strategy can pay per unit traded before its
        mean return turns negative. Negative: it loses money before any cost; None: it never trades.
        """
        scored = {m: self.at_cost(m).positions(series, executed, decisions) for m in {*multipliers, 0.0, 1.0}}
        levels = {f"{m:g}x": {k: scored[m][1][k] for k in ("sharpe", "total_return_pct")} for m in multipliers}
        free, full = (float(scored[m][0].record["net"].sum()) for m in (0.0, 1.0))
        paid = free - full
        multiple = free / paid if paid > 0 else None
        bps = multiple * self.sim.cost_rate * 1e4 if multiple is not None else None
        return {"levels": levels, "break_even_multiple": multiple, "break_even_bps": bps}
