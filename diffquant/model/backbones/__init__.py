"""Backbones map a z-scored window to one feature vector per window (N, D).

Each takes the window channel-major (N, F, ctx) or time-major (N, ctx, F), as its ``channel_major`` says, and
exposes ``out_dim`` = D. docs/backbones.md lists them with their params and sizes.
"""

from __future__ import annotations

from torch import nn

from diffquant.config import ModelConfig
from diffquant.model.backbones.dlinear import DLinear
from diffquant.model.backbones.itransformer import ITransformer
from diffquant.model.backbones.linear_attention import LinearAttention
from diffquant.model.backbones.lstm import BiLSTM
from diffquant.model.backbones.patchtst import PatchTST
from diffquant.model.backbones.tcn import TCN
from diffquant.model.backbones.vsn_lstm import VSNLSTM


def build_backbone(cfg: ModelConfig, n_features: int, context: int) -> nn.Module:
    """The backbone named by ``model.backbone``, built from its own config section."""
    match cfg.backbone:
        case "itransformer":
            c = cfg.itransformer
            return ITransformer(n_features, context, c.d_model, c.n_heads, c.n_layers, c.d_ff, c.dropout)
        case "lstm":
            c = cfg.lstm
            return BiLSTM(n_features, c.hidden, c.layers, c.dropout, c.bidirectional)
        case "patchtst":
            c = cfg.patchtst
            return PatchTST(
                n_features, context, c.patch_len, c.stride, c.d_model, c.n_heads, c.n_layers, c.d_ff, c.dropout
            )
        case "dlinear":
            c = cfg.dlinear
            return DLinear(n_features, context, c.kernel, c.d_out, c.individual)
        case "tcn":
            c = cfg.tcn
            return TCN(n_features, c.channels, c.levels, c.kernel, c.dropout)
        case "vsn_lstm":
            c = cfg.vsn_lstm
            return VSNLSTM(n_features, c.d_model, c.hidden, c.layers, c.dropout)
        case "linear_attention":
            c = cfg.linear_attention
            return LinearAttention(n_features, c.d_model, c.n_heads, c.n_layers, c.d_ff, c.conv_kernel, c.dropout)
    raise ValueError(f"model.backbone: no backbone named {cfg.backbone!r}")
