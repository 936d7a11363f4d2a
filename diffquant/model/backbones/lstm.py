"""(Bidirectional) LSTM over the window's time steps."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BiLSTM(nn.Module):
    """(N, ctx, F) time-major windows -> (N, hidden * directions): each direction's final state, last layer."""

    channel_major = False

    def __init__(self, n_features: int, hidden: int, layers: int, dropout: float, bidirectional: bool) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            n_features,
            hidden,
            layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.directions = 2 if bidirectional else 1
        self.out_dim = hidden * self.directions
        self.norm = nn.LayerNorm(self.out_dim)

    def forward(self, x: Tensor) -> Tensor:
        _, (h, _) = self.lstm(x)  # h: (layers * directions, N, hidden)
        return self.norm(torch.cat(list(h[-self.directions :]), dim=-1))  # (N, hidden * directions)
