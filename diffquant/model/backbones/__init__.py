"""Backbones map a z-scored window (N, ctx, F) to one feature vector per window (N, D)."""

from __future__ import annotations

from torch import nn

from diffquant.config import ModelConfig
from diffquant.model.backbones.itransformer import ITransformer
from diffquant.model.backbones.lstm import BiLSTM


def build_backbone(cfg: ModelConfig, n_features: int, context: int) -> nn.Module:
    """The backbone named by ``model.backbone``; each exposes ``out_dim``."""
    if cfg.backbone == "itransformer":
        c = cfg.itransformer
        return ITransformer(n_features, context, c.d_model, c.n_heads, c.n_layers, c.d_ff, c.dropout)
    c = cfg.lstm
    return BiLSTM(n_features, c.hidden, c.layers, c.dropout, c.bidirectional)
