"""iTransformer: each channel's whole window is one token, attention runs across channels (Liu et al., 2024)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from diffquant.model.backbones.channel_attention_cpu import available as kernel_available
from diffquant.model.backbones.channel_attention_cpu import channel_attention_cpu
from diffquant.model.dropout import EpisodeDropout


class _ChannelAttention(torch.autograd.Function):
    """Softmax attention over a few tokens, reading q, k, v per head as strided slices of the fused qkv output.

    The same math as ``F.scaled_dot_product_attention`` (no mask, no dropout, scale 1/sqrt(d_head)), shaped for
    what training feeds it: thousands of windows x 6 channel tokens x 16 dims per head. There the SDPA CPU kernels
    spend most of their time on per-block overhead, and the permuted q, k, v views cost copies forward and a ``cat``
    plus a ``contiguous`` of the qkv gradient backward. Here each head is batched matmuls on strided slices, the
    backward is written out and returns one contiguous (N, T, 3 d_model) gradient, and the scores are kept
    transposed, (head, N, key, query), because torch's softmax over a last dim of 6 is ~4x slower than over dim 2.
    Matmul outputs go to fresh contiguous buffers (``out=``): bmm on strided inputs otherwise returns strided results.
    """

    @staticmethod
    def forward(ctx: Any, qkv: Tensor, n_heads: int) -> Tensor:
        n, t, d3 = qkv.shape
        dh = d3 // 3 // n_heads
        q, k, v = _heads(qkv, n_heads)
        scores_t = qkv.new_empty(n_heads, n, t, t)
        for h in range(n_heads):
            torch.baddbmm(scores_t[h], k[h], q[h].transpose(1, 2), beta=0.0, alpha=dh**-0.5, out=scores_t[h])
        probs_t = torch.softmax(scores_t, 2)
        out = [torch.bmm(probs_t[h].transpose(1, 2), v[h], out=qkv.new_empty(n, t, dh)) for h in range(n_heads)]
        ctx.save_for_backward(qkv, probs_t)
        ctx.n_heads = n_heads
        return torch.cat(out, -1)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        qkv, probs_t = ctx.saved_tensors
        n_heads = ctx.n_heads
        n, t, d = grad.shape
        dh = d // n_heads
        q, k, v = _heads(qkv, n_heads)
        g = [grad[:, :, h * dh : (h + 1) * dh] for h in range(n_heads)]
        grad_pt = torch.empty_like(probs_t)
        for h in range(n_heads):
            torch.bmm(v[h], g[h].transpose(1, 2), out=grad_pt[h])
        # softmax backward along dim 2: dS = P * (dP - sum(dP * P)), then the 1/sqrt(d_head) scale
        grad_st = grad_pt.sub_((grad_pt * probs_t).sum(2, keepdim=True)).mul_(probs_t).mul_(dh**-0.5)
        grad_q = [torch.bmm(grad_st[h].transpose(1, 2), k[h], out=qkv.new_empty(n, t, dh)) for h in range(n_heads)]
        grad_k = [torch.bmm(grad_st[h], q[h], out=qkv.new_empty(n, t, dh)) for h in range(n_heads)]
        grad_v = [torch.bmm(probs_t[h], g[h], out=qkv.new_empty(n, t, dh)) for h in range(n_heads)]
        return torch.cat(grad_q + grad_k + grad_v, -1), None


def _heads(qkv: Tensor, n_heads: int) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Per-head (N, T, d_head) strided views of q, k and v in the fused (N, T, 3 d_model) qkv output."""
    d = qkv.shape[2] // 3
    dh = d // n_heads
    q, k, v = ([qkv[:, :, j * d + h * dh : j * d + (h + 1) * dh] for h in range(n_heads)] for j in range(3))
    return q, k, v


def channel_attention(qkv: Tensor, n_heads: int) -> Tensor:
    """(N, T, 3 d_model) fused [q | k | v] (heads contiguous within each) -> (N, T, d_model) attention output.

    On the CPU the C kernel (:mod:`.channel_attention_cpu`, ~1.8x faster at the primary config's shapes) where it
    builds; elsewhere, and as its reference, :func:`channel_attention_torch`.
    """
    if qkv.device.type == "cpu" and kernel_available(qkv.dtype):
        return channel_attention_cpu(qkv, n_heads)
    return channel_attention_torch(qkv, n_heads)


def channel_attention_torch(qkv: Tensor, n_heads: int) -> Tensor:
    """``channel_attention`` as torch ops (batched matmuls per head): the GPU's path and the CPU kernel's reference."""
    return _ChannelAttention.apply(qkv, n_heads)


class EncoderLayer(nn.Module):
    """Pre-LN transformer encoder layer (GELU), the same parameters as ``nn.TransformerEncoderLayer``.

    Written out so its dropouts can share masks across an episode (``EpisodeDropout``); attention weights are not
    dropped (with 6 channel tokens a dropped weight removes a whole channel). Attention is ``channel_attention``
    and each residual ``x + dropout(y)`` is one fused op (``EpisodeDropout.add``): the same math as SDPA and a
    separate add; on the 2-core CPU this cut a primary-config training epoch by ~15% (benchmarks/bench_train.py).
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
        """(N, T, d_model) -> the same; leading dims (N, C, T, d_model) are sequences of their own (PatchTST's
        channels), kept so that dropout masks group by the first dim, the window."""
        qkv = self.qkv(self.norm1(x))
        attn = channel_attention(qkv.reshape(-1, *qkv.shape[-2:]), self.n_heads).view(*qkv.shape[:-1], -1)
        x = self.drop_attn.add(x, self.proj(attn))
        return self.drop_out.add(x, self.ff2(self.drop_ff(F.gelu(self.ff1(self.norm2(x))))))


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
