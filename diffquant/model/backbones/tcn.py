"""Temporal convolutional network: residual blocks of dilated causal convolutions (Bai, Kolter & Koltun, 2018)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from diffquant.model.dropout import EpisodeDropout


class CausalConv(nn.Conv1d):
    """Conv1d padded on the left only: output bar t sees input bars t - (kernel - 1) * dilation .. t."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, ((self.kernel_size[0] - 1) * self.dilation[0], 0)))


class TemporalBlock(nn.Module):
    """Two dilated causal convolutions (ReLU, dropout) plus the input, through a 1x1 conv when widths differ.

    Plain convolutions: the paper's weight normalisation is left out; the network ends in a LayerNorm instead.
    """

    def __init__(self, in_channels: int, channels: int, kernel: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = CausalConv(in_channels, channels, kernel, dilation=dilation)
        self.conv2 = CausalConv(channels, channels, kernel, dilation=dilation)
        self.drop1 = EpisodeDropout(dropout)
        self.drop2 = EpisodeDropout(dropout)
        self.skip = nn.Conv1d(in_channels, channels, 1) if in_channels != channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.drop1(F.relu(self.conv1(x)))
        y = self.drop2(F.relu(self.conv2(y)))
        return F.relu(y + self.skip(x))


class TCN(nn.Module):
    """(N, F, T) channel-major bars -> (N, channels) features of the last bar (``forward``) or of every bar
    (``forward_series``, (N, T, channels)).

    Block i dilates by 2^i, so the last bar sees 1 + 2 (kernel - 1)(2^levels - 1) bars (125 at the defaults:
    the whole 96-bar window). Every output is causal, which is what lets the series path reuse the same weights.
    """

    channel_major = True

    def __init__(self, n_features: int, channels: int, levels: int, kernel: int, dropout: float) -> None:
        super().__init__()
        widths = [n_features] + [channels] * levels
        self.blocks = nn.Sequential(*(TemporalBlock(widths[i], channels, kernel, 2**i, dropout) for i in range(levels)))
        self.norm = nn.LayerNorm(channels)
        self.out_dim = channels
        self.receptive_field = 1 + 2 * (kernel - 1) * (2**levels - 1)

    def forward_series(self, x: Tensor) -> Tensor:
        return self.norm(self.blocks(x).transpose(1, 2))  # (N, T, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.blocks(x)[:, :, -1])
