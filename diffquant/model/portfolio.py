"""PortfolioPolicy: A assets' windows -> shared encoder -> cross-asset attention -> per-asset head -> weights.

Shapes: B episodes (or N decision points), H decisions per episode, A assets, ctx bars per window, F features, D the
encoder's feature width.

Each asset's window goes through the single-asset policy's encoder (any backbone, ``backbone_features``), the same
weights for every asset. An attention layer then lets each asset read the *other* present assets' features (no
positional encoding: the assets are a set, so permuting them permutes the weights), and the single-asset
``PolicyHead`` turns each asset's features plus its own state [prev_weight, prev_delta] into a raw position
tanh(dir) * sigmoid(gate). ``book_weights`` makes the raw positions neutral (``model.portfolio.neutral``) and scales
them so the gross exposure sum_i |w_i| stays within the leverage (``cap_gross``; both in ``sim.execution``, which the
engines share). Everything but the head's scalar recursion runs batched over B x A x H windows, as in
``PolicyNetwork``.

An asset's own features reach its head through the residual, so attention skips the asset itself: a portfolio of one
asset (or an asset with no other present) gets exactly zero context, and with leverage >= 1 the portfolio of one asset
is the single-asset policy, for any parameters (docs/design_notes.md, "Portfolio policy").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffquant.config import ModelConfig
from diffquant.model.backbones import build_backbone
from diffquant.model.band import LearnedBand
from diffquant.model.dropout import set_episode_length
from diffquant.model.policy import PolicyHead, PolicyNetwork, backbone_features, sliding_windows
from diffquant.sim.execution import Neutral, book_weights, cap_gross, only_present

__all__ = ["AssetAttention", "PortfolioPolicy", "book_weights", "cap_gross", "make_policy", "only_present"]


class AssetAttention(nn.Module):
    """Multi-head attention of each asset over the other present assets: (..., A, D) -> (..., A, D) context.

    Pre-LN queries, keys and values from one fused Linear; the output projection has no bias, so an asset with no
    other present asset gets exactly zero context (its scores are filled, softmaxed and then zeroed, which keeps
    values and gradients finite where an all -inf row would give NaN). The projection starts at zero: the untrained
    portfolio's raw positions are the single-asset policy's per asset, and training decides how much context to use.
    """

    def __init__(self, d_in: int, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"attention width {d_model} does not split into {n_heads} heads")
        self.n_heads = n_heads
        self.norm = nn.LayerNorm(d_in)
        self.qkv = nn.Linear(d_in, 3 * d_model)
        self.out = nn.Linear(d_model, d_in, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, x: Tensor, present: Tensor) -> Tensor:
        """x (..., A, D), present (..., A) bool (broadcast over x's leading dims) -> (..., A, D)."""
        *lead, a, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(*lead, a, 3, self.n_heads, -1).movedim(-4, -2)  # (..., 3, h, A, dh)
        q, k, v = qkv.unbind(-4)
        scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # (..., h, A query, A key)
        others = ~torch.eye(a, dtype=torch.bool, device=x.device)
        allowed = (present[..., None, :] & others).unsqueeze(-3)  # (..., 1, A, A): keys present and not the query
        probs = torch.softmax(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min), dim=-1) * allowed
        return self.out((probs @ v).transpose(-3, -2).reshape(*lead, a, -1))


class PortfolioPolicy(nn.Module):
    """features of A assets [t-ctx+1 .. t] -> weights_t (A,) with sum_i |w_i| <= leverage, neutral as configured.

    ``present`` (B, A) bool marks the assets with data (all by default): an absent asset's window is never read
    (NaN there is fine), it is no attention key, and its weight and gate are exactly 0, so leaving it out of the
    batch gives the other assets the same weights. ``beta`` (B, A) per decision: each asset's beta against the
    universe's equal-weight return (``sim.execution.market_betas``), read only by a beta-neutral book. Decisions are
    ``decision_every`` bars apart and a learned band width is ``band``, as for ``PolicyNetwork``.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        n_features: int,
        context: int,
        *,
        leverage: float = 1.0,
        d_attn: int = 32,
        n_heads: int = 2,
        neutral: Neutral = "none",
        beta_window: int = 48,
    ) -> None:
        super().__init__()
        if leverage <= 0:
            raise ValueError(f"leverage must be > 0, got {leverage}")
        self.n_features = n_features
        self.context = context
        self.leverage = leverage
        self.neutral = neutral
        self.beta_window = beta_window  # the engines' beta estimate (``BookSeries.betas``) of a beta-neutral book
        self.decision_every = cfg.decision_every
        self.backbone = build_backbone(cfg, n_features, context)
        h = cfg.head
        self.head = PolicyHead(self.backbone.out_dim, list(h.dense), h.dropout, h.tau_dir, h.tau_gate, h.gate_bias)
        self.attention = AssetAttention(self.backbone.out_dim, d_attn, n_heads)
        if cfg.band_floor is not None:
            self.band = LearnedBand(cfg.band_floor)

    def book(self, raw: Tensor, present: Tensor | None, beta: Tensor | None) -> Tensor:
        """Raw positions (..., A) -> the weights held: neutral, then within the leverage (``book_weights``)."""
        return book_weights(raw, self.leverage, self.neutral, present, beta)

    def mix(self, feats: Tensor, present: Tensor) -> Tensor:
        """Encoder features (N, A, D), present (N, A) -> the features with each asset's context added (N, A, D),
        what the head reads (walk-forward applies the head itself, in batches of its choosing)."""
        return feats + self.attention(feats, present)

    def logits(self, windows: Tensor, present: Tensor | None) -> Tensor:
        """(B, A, H, F, ctx) raw feature windows -> (B, H, A, 2) state-free direction and gate logits.

        Rows are (episode, asset, step) so an episode-asset's H windows are consecutive, the grouping
        ``EpisodeDropout`` shares one mask over.
        """
        b, a, h = windows.shape[:3]
        if present is None:
            present = windows.new_ones(b, a, dtype=torch.bool)
        else:
            windows = only_present(windows, present[:, :, None, None, None])
        feats = backbone_features(self.backbone, windows.reshape(b * a * h, self.n_features, self.context))
        feats = feats.view(b, a, h, -1)
        feats = self.mix(feats.transpose(1, 2), present[:, None]).transpose(1, 2)
        return self.head(feats.reshape(b * a * h, -1)).view(b, a, h, 2).transpose(1, 2)

    def forward(
        self,
        windows: Tensor,
        prev_weight: Tensor,
        prev_delta: Tensor,
        present: Tensor | None = None,
        beta: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The plain one-step policy: (N, A, ctx, F), state (N, A), (N, A) -> weights (N, A), gates (N, A)."""
        if windows.shape[2:] != (self.context, self.n_features):
            raise ValueError(
                f"windows of shape {tuple(windows.shape[2:])} given; this policy takes ({self.context}, "
                f"{self.n_features}) (context, features)"
            )
        logits = self.logits(windows.transpose(2, 3).unsqueeze(2), present)[:, 0]  # (N, A, 2)
        raw, gate = self.head.step(logits, prev_weight, prev_delta)
        return self.book(raw, present, beta), only_present(gate, present)

    def rollout(
        self,
        features: Tensor,
        horizon: int,
        full_bptt: bool,
        present: Tensor | None = None,
        beta: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Weights for every step of a batch of episodes, the fast way.

        features (B, ctx + H P, A, F) -> weights (B, H, A), gates (B, H, A), P = ``decision_every``; ``beta``
        (B, H, A) per decision. Decision t sees rows t P .. t P + ctx - 1 of every asset. All B x A x H windows go
        through the encoder in one call; only the head's recursion (a vector of A per episode) loops over t.
        """
        b, _, a, f = features.shape
        every = self.decision_every
        series = features.transpose(1, 2).reshape(b * a, -1, f)  # (B * A, ctx + H P, F)
        windows = sliding_windows(series, self.context)[:, : (horizon - 1) * every + 1 : every]  # (B * A, H, F, ctx)
        set_episode_length(self, horizon)
        try:
            logits = self.logits(windows.reshape(b, a, horizon, f, self.context), present)
        finally:
            set_episode_length(self, 1)

        steps = iter(range(horizon))  # ``scan`` calls ``book`` once per step, in order

        def book(raw: Tensor) -> Tensor:
            t = next(steps)
            return self.book(raw, present, None if beta is None else beta[:, t])

        weights, gates = self.head.scan(logits, not full_bptt, book=book)
        return weights, only_present(gates, None if present is None else present[:, None])

    def rollout_reference(
        self,
        features: Tensor,
        horizon: int,
        full_bptt: bool,
        present: Tensor | None = None,
        beta: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The plain step-by-step rollout (one encoder call per step) that ``rollout`` must equal."""
        prev = features.new_zeros(features.shape[0], features.shape[2])
        delta = torch.zeros_like(prev)
        weights, gates = [], []
        for t in range(horizon):
            first = t * self.decision_every
            window = features[:, first : first + self.context].transpose(1, 2)
            w, gate = self(window, prev, delta, present, None if beta is None else beta[:, t])
            weights.append(w)
            gates.append(gate)
            delta, prev = w - prev, w
            if not full_bptt:
                delta, prev = delta.detach(), prev.detach()
        return torch.stack(weights, 1), torch.stack(gates, 1)


def make_policy(cfg: ModelConfig, n_features: int, context: int) -> PolicyNetwork | PortfolioPolicy:
    """The network ``model.kind`` names: one asset's ``PolicyNetwork`` or the ``PortfolioPolicy`` over a book."""
    if cfg.kind == "single":
        return PolicyNetwork(cfg, n_features, context)
    p = cfg.portfolio
    return PortfolioPolicy(
        cfg,
        n_features,
        context,
        leverage=p.leverage,
        d_attn=p.d_attn,
        n_heads=p.n_heads,
        neutral=p.neutral,
        beta_window=p.beta_window or context - 1,  # 0: the returns inside the window
    )
