"""PatchTST: patches of each channel's window are the tokens, channels go through one transformer independently
(Nie et al., 2023).

The policy's per-window z-score already does what PatchTST's RevIN does (instance normalisation per channel), so
there is no second normalisation here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffquant.model.backbones.itransformer import EncoderLayer


class PatchTST(nn.Module):
    """(N, F, ctx) channel-major windows -> (N, F * d_model).

    Patches are aligned to the window's end (the last patch ends at the decision bar); when ``ctx - patch_len`` is
    not a multiple of ``stride`` the oldest few bars are left out rather than padding the newest. Every channel is
    embedded, encoded and summarised by the same weights (channel independence); the summary is a linear map of the
    flattened patch tokens, PatchTST's "flatten head" ending in d_model features instead of a forecast.
    """

    channel_major = True

    def __init__(
        self,
        n_features: int,
        context: int,
        patch_len: int,
        stride: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        d_ff: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.patch_len, self.stride = patch_len, stride
        self.n_patches = (context - patch_len) // stride + 1
        self.skip = (context - patch_len) % stride  # oldest bars before the first patch
        self.embed = nn.Linear(patch_len, d_model)
        self.position = nn.Parameter(0.02 * torch.randn(self.n_patches, d_model))
        self.layers = nn.ModuleList(EncoderLayer(d_model, n_heads, d_ff, dropout) for _ in range(n_layers))
        self.out_norm = nn.LayerNorm(d_model)
        self.summary = nn.Linear(self.n_patches * d_model, d_model)
        self.summary_norm = nn.LayerNorm(d_model)
        self.out_dim = n_features * d_model

    def forward(self, x: Tensor) -> Tensor:
        patches = x[..., self.skip :].unfold(-1, self.patch_len, self.stride)  # (N, F, P, patch_len)
        tokens = self.embed(patches) + self.position  # (N, F, P, d_model)
        for layer in self.layers:
            tokens = layer(tokens)
        summary = self.summary(torch.flatten(self.out_norm(tokens), 2))  # (N, F, d_model)
        return torch.flatten(self.summary_norm(summary), 1)  # (N, F * d_model)
