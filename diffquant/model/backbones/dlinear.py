"""DLinear: a moving-average trend and the remainder, each mapped over time by a linear layer (Zeng et al., 2023)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def trailing_mean(x: Tensor, kernel: int) -> Tensor:
    """(..., C, T) -> (..., C, T): the mean of the last ``kernel`` bars at every bar, the first bar repeated before
    the start. Trailing, not DLinear's centred average: a bar's trend uses no later bar."""
    padded = F.pad(x, (kernel - 1, 0), mode="replicate")
    return F.avg_pool1d(padded, kernel, stride=1)


class DLinear(nn.Module):
    """(N, F, ctx) channel-major windows -> (N, F * d_out).

    Each channel's window is split into trend (trailing mean) and remainder; one Linear(ctx -> d_out) per part maps
    each, per channel when ``individual`` (DLinear's "individual" variant), else shared by all channels. Their sum,
    layer-normalised, is that channel's features.
    """

    channel_major = True

    def __init__(self, n_features: int, context: int, kernel: int, d_out: int, individual: bool) -> None:
        super().__init__()
        self.kernel = kernel
        maps = n_features if individual else 1
        bound = 1.0 / math.sqrt(context)  # nn.Linear's default init
        self.weight = nn.Parameter(torch.empty(2, maps, context, d_out).uniform_(-bound, bound))  # [trend, rest]
        self.bias = nn.Parameter(torch.empty(maps, d_out).uniform_(-bound, bound))
        self.norm = nn.LayerNorm(d_out)
        self.out_dim = n_features * d_out

    def forward(self, x: Tensor) -> Tensor:
        trend = trailing_mean(x, self.kernel)
        w_trend, w_rest = self.weight.expand(2, x.shape[1], *self.weight.shape[2:])
        # per channel: (F, N, ctx) @ (F, ctx, d_out) -> (F, N, d_out)
        out = torch.bmm(trend.transpose(0, 1), w_trend) + torch.bmm((x - trend).transpose(0, 1), w_rest)
        return torch.flatten(self.norm(out.transpose(0, 1) + self.bias), 1)  # (N, F * d_out)
