"""A no-trade band whose width is trained with the policy (``sim.band_learned``), above a floor (``sim.band``).

width = floor + softplus(theta): positive, smooth in theta, never below the floor. The band itself is the execution
layer's (``diffquant.sim.execution.band_step``); the width is a parameter of the policy because the policy's
training is what learns it, and a checkpoint carries it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

INITIAL_EXCESS = 0.01  # the width starts this far above its floor: a band that hardly binds, training widens it


class LearnedBand(nn.Module):
    def __init__(self, floor: float) -> None:
        super().__init__()
        self.floor = float(floor)
        self.theta = nn.Parameter(torch.tensor(math.log(math.expm1(INITIAL_EXCESS))))

    def forward(self) -> Tensor:
        """The width, a scalar tensor."""
        return self.floor + nn.functional.softplus(self.theta)

    def value(self) -> float:
        """The width as a float64 (what the walk-forward engine trades): never below the floor."""
        return self.floor + float(nn.functional.softplus(self.theta.detach().double()))


def band_width(model: nn.Module) -> float | None:
    """A policy's learned band width, or None when its band is not learned (the engine then uses ``sim.band``)."""
    band = getattr(model, "band", None)
    return None if band is None else band.value()
