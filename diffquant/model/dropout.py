"""Dropout with one mask per episode, shared by all of the episode's windows."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EpisodeDropout(nn.Module):
    """Inverted dropout whose mask is drawn once per group of ``group`` consecutive rows.

    Training encodes the H windows of each episode in one batch of B x H rows. Sharing the mask across an
    episode's rows means the H decisions of an episode come from one thinned network (as in variational dropout
    for RNNs), so dropout noise does not show up as spurious trading between consecutive decisions, and drawing
    B masks instead of B x H makes the random numbers, which dominated a CPU training step, H times cheaper.
    ``group = 1`` is ordinary dropout. (The LSTM backbone's dropout between its layers is torch's own, per row.)
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.group = 1

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        return (self._grouped(x) * self._mask(x)).view_as(x)

    def add(self, residual: Tensor, x: Tensor) -> Tensor:
        """``residual + self(x)`` as one ``addcmul`` (one pass over the activations instead of two), same mask draw."""
        if not self.training or self.p == 0.0:
            return residual + x
        return torch.addcmul(self._grouped(residual), self._grouped(x), self._mask(x)).view_as(x)

    def _grouped(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        if n % self.group:
            raise ValueError(f"{n} rows do not split into episodes of {self.group} windows")
        return x.view(n // self.group, self.group, *x.shape[1:])

    def _mask(self, x: Tensor) -> Tensor:
        """Kept rows scaled by 1 / (1 - p), one per episode: (episodes, 1, *x.shape[1:])."""
        shape = (x.shape[0] // self.group, 1, *x.shape[1:])
        return torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - self.p) / (1.0 - self.p)


def set_episode_length(model: nn.Module, group: int) -> None:
    """Tell every EpisodeDropout of ``model`` how many consecutive rows share a mask."""
    for m in model.modules():
        if isinstance(m, EpisodeDropout):
            m.group = group
