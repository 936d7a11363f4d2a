"""Policy and baselines through the one walk-forward engine, with the same costs and metrics.

Used identically by validation during training, threshold search, evaluation and the baselines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from diffquant.config import EvalConfig, SimConfig
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
class Thresholds:
    """Hysteresis between raw and executed positions (see ``apply_hysteresis``)."""

    enter_long: float
    enter_short: float
    exit: float
    min_delta: float

    @classmethod
    def from_eval(cls, cfg: EvalConfig) -> Thresholds:
        return cls(cfg.enter_long, cfg.enter_short, cfg.exit, cfg.min_delta)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Thresholds:
        return cls(**{k: float(d[k]) for k in ("enter_long", "enter_short", "exit", "min_delta")})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Scorer:
    """Everything a walk-forward needs besides the positions: costs, timing and the annualisation."""

    sim: SimConfig
    timeframe_minutes: int
    days_per_year: int

    def executed(
        self, series: SeriesLike, decisions: Decisions, thresholds: Thresholds
    ) -> tuple[WalkForwardResult, dict[str, float]]:
        """Hysteresis on the policy's raw decisions, then walk-forward and metrics."""
        executed = apply_hysteresis(decisions.raw, **thresholds.to_dict())
        return self._score(series, walk_forward(series, executed, self.sim, decisions.raw, decisions.gate))

    def policy(
        self, model: PolicyNetwork, series: SeriesLike, thresholds: Thresholds
    ) -> tuple[WalkForwardResult, dict[str, float]]:
        return self.executed(series, policy_decisions(model, series), thresholds)

    def constant(self, series: SeriesLike, position: float) -> tuple[WalkForwardResult, dict[str, float]]:
        """Buy-and-hold (1.0), flat (0.0) or always-short (-1.0) through the same engine and costs."""
        return self._score(series, walk_forward(series, constant_positions(series, position), self.sim))

    def _score(self, series: SeriesLike, result: WalkForwardResult) -> tuple[WalkForwardResult, dict[str, float]]:
        return result, compute_metrics(result.record, self.timeframe_minutes, self.days_per_year)
