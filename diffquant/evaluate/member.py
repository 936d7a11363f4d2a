"""A member of a traded book: one trained policy and the hysteresis it trades with.

The one class for every place that holds one: a single-asset bundle's seeds (``deploy.bundle``), a portfolio
bundle's (``deploy.book_bundle``) and the policies the look-ahead check runs (``evaluate.lookahead``). It lives in
the evaluate layer, below deploy, because the look-ahead check needs it too.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffquant.config import Hysteresis
from diffquant.model.policy import PolicyNetwork
from diffquant.model.portfolio import PortfolioPolicy


@dataclass(frozen=True)
class Member:
    """One trained policy (one asset's, or a portfolio's) and the hysteresis tuned for it on val."""

    name: str  # "seed_42": what reports, manifests and checkpoint files call it
    policy: PolicyNetwork | PortfolioPolicy
    hysteresis: Hysteresis

    def __post_init__(self) -> None:
        self.policy.eval()  # a member only decides; switching modes per call costs more than a decision
