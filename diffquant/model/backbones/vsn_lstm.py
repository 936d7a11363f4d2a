"""Variable selection network feeding an LSTM, as in the Momentum Transformer family (Wood et al., 2022; the VSN is
the Temporal Fusion Transformer's, Lim et al., 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffquant.model.dropout import EpisodeDropout


class GatedResidualNetwork(nn.Module):
    """GRN(a) = LayerNorm(skip(a) + GLU(W1 dropout(ELU(W2 a)))): TFT's gated residual block."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, 2 * out_dim)  # GLU: value and gate
        self.drop = EpisodeDropout(dropout)
        self.skip = nn.Linear(in_dim, out_dim) if in_dim != out_dim else nn.Identity()
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, a: Tensor) -> Tensor:
        return self.norm(self.skip(a) + F.glu(self.fc2(self.drop(F.elu(self.fc1(a)))), dim=-1))


class VariableSelection(nn.Module):
    """(N, T, F) bars -> (N, T, d_model): per bar, softmax weights over the F features (a GRN of all their
    embeddings) mix the features' GRN-processed embeddings.

    Each feature has its own Linear(1 -> d_model) embedding; the processing GRN is shared by the features
    (TFT has one per variable: with a handful of price features, sharing keeps the block small).
    """

    def __init__(self, n_features: int, d_model: int, dropout: float) -> None:
        super().__init__()
        self.embed_weight = nn.Parameter(torch.randn(n_features, d_model) / d_model**0.5)
        self.embed_bias = nn.Parameter(torch.zeros(n_features, d_model))
        self.weights = GatedResidualNetwork(n_features * d_model, d_model, n_features, dropout)
        self.process = GatedResidualNetwork(d_model, d_model, d_model, dropout)

    def forward(self, x: Tensor) -> Tensor:
        embedded = x.unsqueeze(-1) * self.embed_weight + self.embed_bias  # (N, T, F, d_model)
        weights = torch.softmax(self.weights(torch.flatten(embedded, 2)), dim=-1)  # (N, T, F)
        return (weights.unsqueeze(-1) * self.process(embedded)).sum(2)


class VSNLSTM(nn.Module):
    """(N, T, F) time-major bars -> (N, hidden) features of the last bar (``forward``) or of every bar
    (``forward_series``, (N, T, hidden)): variable selection per bar, then a unidirectional LSTM (causal)."""

    channel_major = False

    def __init__(self, n_features: int, d_model: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.select = VariableSelection(n_features, d_model, dropout)
        self.lstm = nn.LSTM(d_model, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.norm = nn.LayerNorm(hidden)
        self.out_dim = hidden

    def forward_series(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(self.select(x))
        return self.norm(out)  # (N, T, hidden)

    def forward(self, x: Tensor) -> Tensor:
        _, (h, _) = self.lstm(self.select(x))  # h: (layers, N, hidden)
        return self.norm(h[-1])
