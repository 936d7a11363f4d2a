"""PortfolioPolicy: one asset is the single-asset policy, the leverage limit at any logits, assets as a set, masking
as removal, causality across assets, fast rollout == step-by-step reference, and a step on real bars of three assets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from diffquant.config import (
    FeatureConfig,
    HeadConfig,
    ITransformerConfig,
    LossConfig,
    LSTMConfig,
    ModelConfig,
    SimConfig,
)
from diffquant.data.features import build_features
from diffquant.data.sources.bundled import load_bundled
from diffquant.model.dropout import EpisodeDropout
from diffquant.model.policy import PolicyNetwork
from diffquant.model.portfolio import PortfolioPolicy, cap_gross
from diffquant.sim.losses import Objective
from diffquant.sim.simulator import bar_returns, gross_exposure, held_positions, simulate

CTX, F = 16, 4
BACKBONES = ["itransformer", "lstm"]
STATE = torch.tensor([[0.8, -0.5], [0.6, 0.4]])  # state feedback as training would leave it (it starts at zero)
SIM = SimConfig()
OBJECTIVE = Objective(LossConfig(), SIM.smooth_abs_eps)


def tiny(backbone: str) -> ModelConfig:
    return ModelConfig(
        backbone=backbone,
        itransformer=ITransformerConfig(d_model=8, n_heads=2, n_layers=1, d_ff=16),
        lstm=LSTMConfig(hidden=8, layers=1),
        head=HeadConfig(dense=[8]),
    )


def make_portfolio(
    backbone: str = "itransformer", leverage: float = 1.0, dtype: torch.dtype = torch.float32, n_features: int = F
) -> PortfolioPolicy:
    torch.manual_seed(0)
    model = PortfolioPolicy(tiny(backbone), n_features, CTX, leverage=leverage, d_attn=8, n_heads=2)
    with torch.no_grad():
        model.head.state.weight.copy_(STATE)
        nn.init.normal_(model.attention.out.weight, std=0.5)  # starts at zero: give it weights as training would
    return model.to(dtype).eval()


def make_features(b: int, horizon: int, a: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, ctx + H, A, F) with per-asset scales, so the assets' windows differ in more than noise."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.rand(1, 1, a, F, generator=gen, dtype=torch.float64) * 3 + 0.5
    return (torch.randn(b, CTX + horizon, a, F, generator=gen, dtype=torch.float64) * scale).to(dtype)


def book_loss(weights: torch.Tensor, returns: torch.Tensor, funding: torch.Tensor) -> torch.Tensor:
    held = held_positions(weights, SIM.execution_lag_bars, time_axis=1)
    return OBJECTIVE(simulate(held, returns, funding, SIM).book_net, weights)[0]


def market(b: int, horizon: int, a: int, seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    returns = 0.01 * torch.randn(b, horizon, a, generator=gen, dtype=torch.float64)
    funding = 1e-4 * torch.randn(b, horizon, a, generator=gen, dtype=torch.float64)
    return returns.to(dtype), funding.to(dtype)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("full_bptt", [True, False])
def test_one_asset_is_the_single_asset_policy(backbone, full_bptt, monkeypatch):
    """Same weights, PnL, loss and gradients bit for bit: the attention has no other asset, the cap does not bind.

    Gradients are compared with the single-asset policy's plain recursion (``scan_loop``, which the portfolio's
    recursion is); its one-node scan (``head_scan``) gives the same forward floats and gradients within rounding.
    """
    horizon = 6
    torch.manual_seed(1)
    single = PolicyNetwork(tiny(backbone), F, CTX).eval()
    portfolio = make_portfolio(backbone, leverage=2.0)
    portfolio.backbone.load_state_dict(single.backbone.state_dict())
    portfolio.head.load_state_dict(single.head.state_dict())
    features = make_features(3, horizon, 1, seed=2)
    returns, funding = market(3, horizon, 1, seed=3)

    pos, gate = single.rollout(features[:, :, 0], horizon, full_bptt)
    weights, gates = portfolio.rollout(features, horizon, full_bptt)
    assert torch.equal(weights[..., 0], pos) and torch.equal(gates[..., 0], gate)
    ref, _ = portfolio.rollout_reference(features, horizon, full_bptt)
    assert torch.equal(ref[..., 0], single.rollout_reference(features[:, :, 0], horizon, full_bptt)[0])

    loss_book = book_loss(weights, returns, funding)
    loss_book.backward()
    fast_grads = {}
    for plain in (False, True):
        if plain:
            monkeypatch.setattr(single.head, "scan", single.head.scan_loop)
        single.zero_grad()
        loss_single = book_loss(
            single.rollout(features[:, :, 0], horizon, full_bptt)[0], returns[..., 0], funding[..., 0]
        )
        assert torch.equal(loss_single, loss_book)
        loss_single.backward()
        fast_grads = fast_grads or {name: p.grad.clone() for name, p in single.named_parameters()}
    for name, p in single.named_parameters():
        assert torch.equal(p.grad, portfolio.get_parameter(name).grad), name
        torch.testing.assert_close(fast_grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert portfolio.attention.out.weight.grad.abs().max() == 0  # no other asset: no context, no gradient


def test_untrained_attention_adds_nothing():
    """The context projection starts at zero: an untrained portfolio's logits are each asset's single-asset logits."""
    torch.manual_seed(4)
    portfolio = PortfolioPolicy(tiny("itransformer"), F, CTX).eval()
    single = PolicyNetwork(tiny("itransformer"), F, CTX).eval()
    single.backbone.load_state_dict(portfolio.backbone.state_dict())
    single.head.load_state_dict(portfolio.head.state_dict())
    windows = make_features(2, 0, 3, seed=5)  # (2, ctx, 3, F): one window per asset
    with torch.no_grad():
        logits = portfolio.logits(windows.permute(0, 2, 3, 1).unsqueeze(2), None)[:, 0]  # (2, 3, 2)
        for i in range(3):
            torch.testing.assert_close(logits[:, i], single.encode(windows[:, :, i]), rtol=0, atol=1e-6)


def test_cap_gross_keeps_a_book_within_the_limit_and_scales_a_larger_one():
    raw = torch.tensor([[0.2, -0.3, 0.1], [0.9, -0.6, 0.5]], dtype=torch.float64)
    w = cap_gross(raw, 1.0)
    assert torch.equal(w[0], raw[0])  # 0.6 <= 1: held as it is
    torch.testing.assert_close(w[1], raw[1] / 2.0, rtol=0, atol=1e-16)  # 2.0 -> 1.0, proportions kept
    present = torch.tensor([[True, False, True], [True, True, True]])
    leaf = raw.clone().requires_grad_()
    w = cap_gross(torch.where(present, leaf, torch.nan), 0.5, present)  # an absent asset's raw value is NaN
    assert w[0, 1].item() == 0.0 and torch.isfinite(w).all()
    w.sum().backward()
    assert torch.isfinite(leaf.grad).all() and leaf.grad[0, 1] == 0


@pytest.mark.parametrize("leverage", [0.5, 1.0, 3.0])
def test_gross_exposure_within_leverage_and_gradients_finite_at_extreme_logits(leverage):
    a = 5
    model = make_portfolio(leverage=leverage)
    gen = torch.Generator().manual_seed(6)
    # the head's recursion on its own: saturated logits of either sign, mixed with ordinary ones
    logits = torch.randn(4, 7, a, 2, generator=gen) * torch.where(torch.rand(4, 7, a, 1, generator=gen) < 0.5, 1e4, 1.0)
    logits.requires_grad_()
    weights, _ = model.head.scan(logits, False, book=lambda raw: cap_gross(raw, leverage))
    slack = leverage * a * torch.finfo(torch.float32).eps
    assert (gross_exposure(weights) <= leverage + slack).all()
    (weights * torch.randn(weights.shape, generator=gen)).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0

    # the whole policy with its logits pushed to 1e4: every asset saturates, the cap binds at every step
    with torch.no_grad():
        model.head.logits.bias.copy_(torch.tensor([1e4, 1e4]))
    horizon = 5
    weights, _ = model.rollout(make_features(3, horizon, a, seed=7), horizon, True)
    exposure = gross_exposure(weights)
    assert (exposure <= leverage + slack).all()
    if leverage < a:
        torch.testing.assert_close(exposure, torch.full_like(exposure, leverage), rtol=1e-6, atol=0)
    loss = book_loss(weights, *market(3, horizon, a, seed=8))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_assets_are_a_set(backbone):
    """Permuting the assets' inputs (and the mask) permutes the weights (float64)."""
    horizon = 5
    model = make_portfolio(backbone, dtype=torch.float64)
    features = make_features(2, horizon, 4, seed=9, dtype=torch.float64)
    present = torch.tensor([[True, True, False, True], [True, True, True, True]])
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        w, g = model.rollout(features, horizon, True, present)
        wp, gp = model.rollout(features[:, :, perm], horizon, True, present[:, perm])
    torch.testing.assert_close(wp, w[..., perm], rtol=0, atol=1e-12)
    torch.testing.assert_close(gp, g[..., perm], rtol=0, atol=1e-12)
    assert (w[..., 0] - w[..., 1]).abs().max() > 1e-3  # a real test: the assets' weights differ


@pytest.mark.parametrize("backbone", BACKBONES)
def test_masking_an_asset_equals_removing_it(backbone):
    """An absent asset (NaN data) gets weight and gate exactly 0, and the others get the weights they get without it."""
    horizon = 5
    model = make_portfolio(backbone, dtype=torch.float64)
    features = make_features(4, horizon, 4, seed=10, dtype=torch.float64).requires_grad_()
    present = torch.tensor([[True, False, True, True], [False, True, True, False], [True] * 4, [False] * 4])
    data = torch.where(present[:, None, :, None], features, torch.nan)
    w, g = model.rollout(data, horizon, True, present)
    absent = ~present[:, None].expand_as(w)
    assert torch.count_nonzero(w[absent]) == 0 and torch.count_nonzero(g[absent]) == 0
    assert torch.isfinite(w).all() and torch.isfinite(g).all()
    with torch.no_grad():
        for b in range(3):  # the last episode has no asset at all
            keep = present[b]
            alone, _ = model.rollout(features[b : b + 1, :, keep], horizon, True)
            torch.testing.assert_close(w[b : b + 1, :, keep], alone, rtol=0, atol=1e-12)
    book_loss(w, *market(4, horizon, 4, seed=11, dtype=torch.float64)).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert (
        torch.isfinite(features.grad).all()
        and torch.count_nonzero(features.grad[~present[:, None].expand(-1, CTX + horizon, -1)]) == 0
    )


@pytest.mark.parametrize("backbone", BACKBONES)
def test_rollout_is_causal_across_assets(backbone):
    """Changing any asset's rows >= t + ctx changes no weight of any asset at decisions 0..t; later ones do move."""
    horizon, t, a = 8, 3, 3
    model = make_portfolio(backbone)
    features = make_features(2, horizon, a, seed=12)
    with torch.no_grad():
        base, _ = model.rollout(features, horizon, True)
        for j in range(a):
            changed = features.clone()
            changed[:, t + CTX :, j] = 5 * torch.randn_like(changed[:, t + CTX :, j])
            moved, _ = model.rollout(changed, horizon, True)
            assert torch.equal(moved[:, : t + 1], base[:, : t + 1]), j
            others = [k for k in range(a) if k != j]
            assert (moved[:, t + 1 :, others] - base[:, t + 1 :, others]).abs().max() > 1e-4  # the others see it


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("full_bptt", [True, False])
def test_fast_rollout_equals_reference(backbone, full_bptt):
    """Weights, loss and every parameter's gradient agree (float32), with one asset absent in one episode."""
    horizon, a = 6, 3
    model = make_portfolio(backbone)
    features = make_features(3, horizon, a, seed=13)
    present = torch.tensor([[True, True, True], [True, False, True], [True, True, True]])
    returns, funding = market(3, horizon, a, seed=14)
    out = []
    for rollout in (model.rollout, model.rollout_reference):
        model.zero_grad()
        w, g = rollout(features, horizon, full_bptt, present)
        loss = book_loss(w, returns, funding)
        loss.backward()
        out.append((w.detach(), g.detach(), loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (w, g, loss, grads), (w_ref, g_ref, loss_ref, grads_ref) = out
    torch.testing.assert_close(w, w_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-6)
    assert w[present[:, None].expand_as(w)].abs().min() > 1e-4  # a real test: the present assets are not flat
    assert loss == pytest.approx(loss_ref, abs=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads_ref[name], rtol=1e-4, atol=1e-6, msg=name)
    assert grads["attention.qkv.weight"].abs().sum() > 0


def test_rollout_in_training_mode_restores_the_dropout_group():
    model = make_portfolio().train()
    w, _ = model.rollout(make_features(2, 4, 3, seed=15), 4, True)
    assert torch.isfinite(w).all()
    assert {m.group for m in model.modules() if isinstance(m, EpisodeDropout)} == {1}


def test_step_refuses_a_wrong_window_shape():
    with pytest.raises(ValueError, match=r"\(15, 4\) given; this policy takes \(16, 4\)"):
        make_portfolio()(torch.zeros(2, 3, 15, F), torch.zeros(2, 3), torch.zeros(2, 3))


BUNDLED = Path(__file__).resolve().parents[2] / "data_source" / "bundled"


def shipped_book(symbols: tuple[str, ...], start: str, end: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hourly features (T, A, F) float32, closes (T, A) float64 and funding per bar (T, A) of shipped assets."""
    tables = []
    for symbol in symbols:
        raw = load_bundled(BUNDLED, symbol, 60)
        inside = (raw.bars["open_time"] >= pd.Timestamp(start, tz="UTC")) & (
            raw.bars["open_time"] < pd.Timestamp(end, tz="UTC")
        )
        table = build_features(raw.bars[inside].reset_index(drop=True), raw.funding, FeatureConfig(), 60)
        tables.append(table.set_index("open_time"))
    common = tables[0].index
    for table in tables[1:]:
        common = common.intersection(table.index)
    tables = [t.loc[common].dropna() for t in tables]
    x = [c for c in tables[0].columns if c.startswith("x_")]
    features = np.stack([t[x].to_numpy(np.float32) for t in tables], axis=1)
    close = np.stack([t["close"].to_numpy(np.float64) for t in tables], axis=1)
    funding = np.stack([t["funding_rate"].to_numpy(np.float64) for t in tables], axis=1)
    return features, close, funding


def test_a_training_step_on_real_bars_of_three_assets():
    features, close, funding = shipped_book(("BTCUSDT", "ETHUSDT", "XRPUSDT"), "2024-06-01", "2024-06-10")
    horizon, stride = 12, 12
    starts = range(0, len(close) - CTX - horizon + 1, stride)
    x = torch.as_tensor(np.stack([features[s : s + CTX + horizon] for s in starts]))  # (B, ctx + H, A, F)
    c = np.stack([close[s + CTX - 1 : s + CTX + horizon] for s in starts])  # (B, H + 1, A) float64 prices
    returns = torch.as_tensor(bar_returns(c, time_axis=1), dtype=torch.float32)  # (B, H, A)
    rate = torch.as_tensor(np.stack([funding[s + CTX : s + CTX + horizon] for s in starts]), dtype=torch.float32)
    assert x.shape[0] >= 10 and x.shape[2:] == (3, features.shape[2]) and (rate != 0).any()

    model = make_portfolio(n_features=features.shape[2]).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(2):
        optimiser.zero_grad()
        w, _ = model.rollout(x, horizon, True)
        held = held_positions(w, SIM.execution_lag_bars, time_axis=1)
        res = simulate(held, returns, rate, SIM, leverage=model.leverage)
        loss, _ = OBJECTIVE(res.book_net, w)
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
        optimiser.step()
        losses.append(loss.item())
        # funding is charged per asset exactly on the bars of its own funding stamps
        assert torch.equal(res.funding != 0, (held != 0) & (rate != 0))
    assert losses[0] != losses[1]
