"""The MSE proxy's model: the policy's backbone and dense layers ending in one number, a return forecast.

It is what upstream argues against: fit the next-horizon return by least squares, then trade the forecast. Its
raw position (``forecast_decisions`` in walk_forward) is ``tanh(forecast / scale)``, ``scale`` the spread of its
forecasts on the train bars (set after training), so a one-sigma forecast is a 0.76 position; the same hysteresis
as the policy's then decides the trades.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffquant.config import ModelConfig
from diffquant.model.backbones import build_backbone
from diffquant.model.policy import backbone_features, dense_stack


class Forecaster(nn.Module):
    """features[t-ctx+1 .. t] -> forecast of the standardised next-horizon return."""

    def __init__(self, cfg: ModelConfig, n_features: int, context: int) -> None:
        super().__init__()
        self.n_features = n_features
        self.context = context
        self.backbone = build_backbone(cfg, n_features, context)
        self.mlp, width = dense_stack(self.backbone.out_dim, list(cfg.head.dense), cfg.head.dropout)
        self.out = nn.Linear(width, 1)
        self.register_buffer("scale", torch.ones(()))  # forecast -> position: tanh(forecast / scale)

    def encode_channel_major(self, windows: Tensor) -> Tensor:
        """(N, F, ctx) raw feature windows -> (N,) forecasts; the same input path as the policy's."""
        return self.out(self.mlp(backbone_features(self.backbone, windows))).squeeze(-1)
