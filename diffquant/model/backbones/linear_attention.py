"""Causal linear attention over bars (Katharopoulos et al., 2020): cost linear in the number of bars.

Softmax attention's exp(q.k) is replaced by phi(q).phi(k) with phi = elu + 1 > 0, so bar t's output is
phi(q_t) S_t / phi(q_t) z_t with running sums S_t = sum_{s<=t} phi(k_s) v_s^T and z_t = sum_{s<=t} phi(k_s).
Computed chunk by chunk: masked products inside a chunk, the running sums carried between chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffquant.model.dropout import EpisodeDropout

CHUNK = 32  # bars per chunk: quadratic work inside (CHUNK^2 per chunk), state sums d_head^2 between chunks


def _exclusive_cumsum(x: Tensor, dim: int) -> Tensor:
    """Sums of everything before each position along ``dim`` (zero at the first)."""
    total = x.cumsum(dim)
    return torch.cat([torch.zeros_like(total.narrow(dim, 0, 1)), total.narrow(dim, 0, x.shape[dim] - 1)], dim)


def causal_linear_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """(N, H, T, d) positive feature maps phi(q), phi(k) and values v -> (N, H, T, d): bar t attends to bars <= t."""
    n, h, t, d = q.shape
    # Rows padded after the end come later than every real bar, so change none of them; padded queries are ones,
    # not zeros, so that their (discarded) outputs are not 0 / 0, whose NaN would reach the gradient.
    pad = -t % CHUNK
    q = F.pad(q, (0, 0, 0, pad), value=1.0).view(n, h, -1, CHUNK, d)  # (N, H, chunks, CHUNK, d)
    k, v = (F.pad(a, (0, 0, 0, pad)).view(n, h, -1, CHUNK, d) for a in (k, v))
    scores = (q @ k.transpose(-1, -2)).tril()  # (N, H, chunks, CHUNK, CHUNK), within a chunk, s <= t
    state = _exclusive_cumsum(k.transpose(-1, -2) @ v, 2)  # (N, H, chunks, d, d): sums of earlier chunks
    k_state = _exclusive_cumsum(k.sum(3), 2)  # (N, H, chunks, d)
    num = scores @ v + q @ state
    den = scores.sum(-1) + (q * k_state.unsqueeze(3)).sum(-1)
    return (num / den.unsqueeze(-1)).view(n, h, -1, d)[:, :, :t]


class LinearAttentionLayer(nn.Module):
    """Pre-LN block: causal depthwise conv (local order; linear attention alone has no notion of position),
    causal linear attention, then a GELU feed-forward; dropouts share masks across an episode."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, conv_kernel: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.conv = nn.Conv1d(d_model, d_model, conv_kernel, groups=d_model)
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
        h = self.norm1(x).transpose(1, 2)  # (N, d_model, T)
        h = F.silu(self.conv(F.pad(h, (self.conv.kernel_size[0] - 1, 0)))).transpose(1, 2)  # causal: left pad
        q, k, v = self.qkv(h).view(n, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        attn = causal_linear_attention(F.elu(q) + 1, F.elu(k) + 1, v)  # (N, H, T, d_head)
        x = self.drop_attn.add(x, self.proj(attn.transpose(1, 2).reshape(n, t, d)))
        return self.drop_out.add(x, self.ff2(self.drop_ff(F.gelu(self.ff1(self.norm2(x))))))


class LinearAttention(nn.Module):
    """(N, T, F) time-major bars -> (N, d_model) features of the last bar (``forward``) or of every bar
    (``forward_series``, (N, T, d_model)). Bars are the tokens; every layer is causal."""

    channel_major = False

    def __init__(
        self, n_features: int, d_model: int, n_heads: int, n_layers: int, d_ff: int, conv_kernel: int, dropout: float
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(n_features, d_model)
        self.layers = nn.ModuleList(
            LinearAttentionLayer(d_model, n_heads, d_ff, conv_kernel, dropout) for _ in range(n_layers)
        )
        self.out_norm = nn.LayerNorm(d_model)
        self.out_dim = d_model

    def forward_series(self, x: Tensor) -> Tensor:
        return self.out_norm(self._tokens(x))  # (N, T, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_norm(self._tokens(x)[:, -1])

    def _tokens(self, x: Tensor) -> Tensor:
        tokens = self.embed(x)
        for layer in self.layers:
            tokens = layer(tokens)
        return tokens
