"""iTransformer: each channel's whole window is one token, attention runs across channels (Liu et al., 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffquant.model.dropout import EpisodeDropout


class EncoderLayer(nn.Module):
    """Pre-LN transformer encoder layer (GELU), the same parameters as ``nn.TransformerEncoderLayer``.

    Written out so its dropouts can share masks across an episode (``EpisodeDropout``); attention weights are not
    dropped (with 6 channel tokens a dropped weight removes a whole channel).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, d_ff)
        self.ff2 = nn.Linear(d_ff, d_model)
        self.drop_attn = EpisodeDropout(dropout)
        self.drop_ff = EpisodeDropout(dropout)
        self.drop_out = EpisodeDropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v)  # (N, heads, tokens, d_head)
        x = x + self.drop_attn(self.proj(attn.transpose(1, 2).reshape(n, t, d)))
        return x + self.drop_out(self.ff2(self.drop_ff(F.gelu(self.ff1(self.norm2(x))))))


class ITransformer(nn.Module):
    """(N, F, ctx) channel-major windows -> (N, F * d_model).

    A shared Linear(ctx -> d_model) embeds each channel's window; pre-LN encoder layers mix the F channel tokens.
    Time structure enters only through that Linear: there are no time-step tokens.
    """

    channel_major = True

    def __init__(
        self, n_features: int, context: int, d_model: int, n_heads: int, n_layers: int, d_ff: int, dropout: float
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(context, d_model)
        self.embed_norm = nn.LayerNorm(d_model)
        self.layers = nn.ModuleList(EncoderLayer(d_model, n_heads, d_ff, dropout) for _ in range(n_layers))
        self.out_norm = nn.LayerNorm(d_model)
        self.out_dim = n_features * d_model

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed_norm(self.embed(x))  # (N, F, d_model)
        for layer in self.layers:
            tokens = layer(tokens)
        return torch.flatten(self.out_norm(tokens), 1)  # (N, F * d_model)
