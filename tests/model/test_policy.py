"""PolicyNetwork: size, output range, initial gate, fast rollout == step-by-step reference, full_bptt, causality."""

from __future__ import annotations

import dataclasses
import math
import typing

import numpy as np
import pytest
import torch

from diffquant.config import BackboneName, Config, LossConfig, ModelConfig, SimConfig
from diffquant.model.dropout import EpisodeDropout, set_episode_length
from diffquant.model.policy import PolicyNetwork, count_parameters
from diffquant.sim.losses import Objective
from diffquant.train.episodes import EpisodeBatch, batch_loss, episodes_from_arrays, mirror

CTX, F = 96, 6
BACKBONES = typing.get_args(BackboneName)


def make_model(backbone: str = "itransformer", seed: int = 0, feedback: bool = True) -> PolicyNetwork:
    torch.manual_seed(seed)
    model = PolicyNetwork(dataclasses.replace(Config().model, backbone=backbone), F, CTX)
    if feedback:
        # The state feedback starts at zero; with zero weights no gradient crosses the recursion and full_bptt
        # could not matter. Give it weights as training would.
        with torch.no_grad():
            model.head.state.weight.copy_(torch.tensor([[0.8, -0.5], [0.6, 0.4]]))
    return model


def make_batch(b: int, horizon: int, seed: int) -> EpisodeBatch:
    rng = np.random.default_rng(seed)
    length = CTX + horizon
    returns = 0.004 * rng.standard_normal((b, length))
    close = 40_000 * np.cumprod(1 + returns, axis=1)
    features = rng.standard_normal((b, length, F)).astype(np.float32)
    features[..., 3] = returns  # a close-like channel
    funding = 1e-4 * rng.standard_normal((b, length))
    return episodes_from_arrays(features, close, funding, CTX)


def test_parameter_count_primary_itransformer():
    # Upstream's PolicyNetwork had 52,354 parameters. Its head's first dense layer also read the 4 recurrent extras
    # [prev_pos, prev_delta, t/H, (H-t)/H]: 4 x 64 = 256 weights. Here the time extras are gone and the state
    # [prev_pos, prev_delta] enters the final direction/gate pre-activations through a 2 x 2 matrix
    # (docs/design_notes.md): 52,354 - 256 + 4 = 52,102. Upstream's two Linear(32 -> 1) heads are one
    # Linear(32 -> 2) here, the same 66 parameters.
    model = PolicyNetwork(Config().model, F, CTX)
    assert count_parameters(model) == 52_102
    assert model.head.state.weight.numel() == 4


def test_parameter_count_lstm():
    cfg = ModelConfig(backbone="lstm")  # hidden 64, 2 layers, bidirectional; head [64, 32]
    h = cfg.lstm.hidden

    def lstm_layer(inp: int) -> int:  # per direction: 4 gates x (W_ih + W_hh + b_ih + b_hh)
        return 2 * 4 * h * (inp + h + 2)

    backbone = lstm_layer(F) + lstm_layer(2 * h) + 2 * (2 * h)  # + LayerNorm(128)
    head = (128 * 64 + 64) + 2 * 64 + (64 * 32 + 32) + 2 * 32 + (32 * 2 + 2) + 4
    assert backbone + head == 147_046
    assert count_parameters(PolicyNetwork(cfg, F, CTX)) == 147_046


@pytest.mark.parametrize("backbone", BACKBONES)
def test_output_range_and_initial_gate(backbone):
    model = make_model(backbone, feedback=False).eval()
    assert model.head.logits.bias[1].item() == -1.0 and model.head.logits.bias[0].item() == 0.0
    gen = torch.Generator().manual_seed(1)
    windows = torch.randn(256, CTX, F, generator=gen) * torch.rand(256, 1, F, generator=gen) * 100  # varied scales
    windows[:8] = torch.distributions.Cauchy(0.0, 1.0).sample((8, CTX, F))  # heavy tails
    with torch.no_grad():
        pos, gate = model(windows, torch.zeros(256), torch.zeros(256))
    assert ((pos > -1) & (pos < 1)).all() and ((gate > 0) & (gate < 1)).all()
    assert (pos.abs() <= gate).all()
    # the policy starts near flat: mean gate ~ sigmoid(-1) = 0.269, not 0.5. The head's random last layer shifts
    # every window's gate logit by an init-dependent offset (the backbones' LayerNorm'd features are alike across
    # windows): up to ~0.3 on the logit, ~0.06 on the gate, at these seeds.
    assert gate.mean().item() == pytest.approx(1 / (1 + math.e), abs=0.07)
    assert pos.abs().mean().item() < 0.25


def test_encode_refuses_a_wrong_window_shape():
    model = make_model(feedback=False)
    with pytest.raises(ValueError, match=r"\(95, 6\) given; this policy takes \(96, 6\) \(context, features\)"):
        model.encode(torch.zeros(2, 95, 6))
    with pytest.raises(ValueError, match=r"\(96, 5\) given"):
        model.encode(torch.zeros(2, 96, 5))


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("full_bptt", [True, False])
def test_fast_rollout_equals_reference(backbone, full_bptt):
    """Positions, loss (with a mirrored half) and every parameter's gradient agree within 1e-5."""
    horizon = 6
    model = make_model(backbone).eval()
    batch = make_batch(3, horizon, seed=2)
    perm, sign = torch.tensor([0, 2, 1, 3, 4, 5]), torch.tensor([-1.0, -1.0, -1.0, -1.0, 1.0, 1.0])
    sim, objective = SimConfig(), Objective(LossConfig(), SimConfig().smooth_abs_eps)

    fast, _ = model.rollout(batch.features, horizon, full_bptt)
    ref, _ = model.rollout_reference(batch.features, horizon, full_bptt)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    assert fast.abs().min() > 0 and fast.std() > 1e-3  # a real test: positions are neither flat nor constant

    grads, losses = [], []
    for reference in (False, True):
        model.zero_grad()
        loss, _, _ = batch_loss(
            model, batch, objective, sim, horizon, full_bptt, mirror(batch, perm, sign), reference=reference
        )
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    for name, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][name], rtol=1e-4, atol=1e-5, msg=name)
    assert sum(g.abs().sum() for g in grads[0].values()) > 0


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("reference", [False, True])
def test_full_bptt_changes_gradients_not_values(backbone, reference):
    """Upstream's flag did nothing (docs/upstream.md, "Defects fixed" item 3): here it decides whether the gradient
    crosses steps."""
    horizon = 8
    model = make_model(backbone).eval()
    batch = make_batch(4, horizon, seed=3)
    sim, objective = SimConfig(), Objective(LossConfig(), SimConfig().smooth_abs_eps)
    out = {}
    for full in (True, False):
        model.zero_grad()
        loss, _, pnl = batch_loss(model, batch, objective, sim, horizon, full, reference=reference)
        loss.backward()
        out[full] = (loss.item(), pnl, {n: p.grad.clone() for n, p in model.named_parameters()})
    assert out[True][0] == out[False][0]
    assert torch.equal(out[True][1], out[False][1])
    diff = max((out[True][2][n] - out[False][2][n]).abs().max().item() for n in out[True][2])
    scale = max(g.abs().max().item() for g in out[True][2].values())
    assert diff > 1e-3 * scale


def test_full_bptt_gradient_reaches_earlier_decisions():
    """With full_bptt, a loss on the last decision alone has a gradient on the first step's logits."""
    model = make_model()
    logits = torch.randn(2, 5, 2, requires_grad=True)
    for full, expect_nonzero in ((True, True), (False, False)):
        pos, _ = model.head.scan(logits, detach_state=not full)
        (g,) = torch.autograd.grad(pos[:, -1].sum(), logits)
        assert (g[:, 0].abs().sum() > 0) == expect_nonzero
        assert g[:, -1].abs().sum() > 0


@pytest.mark.parametrize("backbone", BACKBONES)
def test_rollout_is_causal(backbone):
    """Decision t sees rows t .. t+ctx-1 only: changing rows >= t+ctx leaves decisions 0..t unchanged."""
    horizon, t = 10, 4
    model = make_model(backbone).eval()
    features = make_batch(3, horizon, seed=4).features
    changed = features.clone()
    changed[:, t + CTX :] = 5 * torch.randn_like(changed[:, t + CTX :])
    with torch.no_grad():
        a, _ = model.rollout(features, horizon, True)
        b, _ = model.rollout(changed, horizon, True)
        ref, _ = model.rollout_reference(changed, horizon, True)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().max() > 1e-3  # the later decisions did see the change
    torch.testing.assert_close(b, ref, rtol=0, atol=1e-5)


def test_rollout_restores_the_dropout_group():
    model = make_model().train()
    model.rollout(make_batch(2, 4, seed=5).features, 4, True)
    groups = {m.group for m in model.modules() if isinstance(m, EpisodeDropout)}
    assert groups == {1}


def test_episode_dropout_shares_masks_within_an_episode():
    torch.manual_seed(6)
    drop = EpisodeDropout(0.5).train()
    drop.group = 4
    y = drop(torch.ones(5 * 4, 32)).view(5, 4, 32)
    assert torch.equal(y, y[:, :1].expand_as(y))  # one mask per episode
    masks = y[:, 0]
    assert all(not torch.equal(masks[i], masks[j]) for i in range(5) for j in range(i + 1, 5))
    assert set(y.unique().tolist()) == {0.0, 2.0}  # inverted dropout: kept units scaled by 1 / (1 - p)
    with pytest.raises(ValueError, match="do not split into episodes of 4"):
        drop(torch.ones(10, 32))


def test_episode_dropout_masks_through_the_model():
    """In a training rollout, the H windows of one episode go through the same thinned network."""
    model = make_model(feedback=False).train()
    set_episode_length(model, 3)
    torch.manual_seed(7)
    window = torch.randn(1, F, CTX)
    # 2 episodes x 3 identical windows: equal logits within an episode, different across episodes
    logits = model.encode_channel_major(window.expand(6, F, CTX).contiguous()).view(2, 3, 2)
    set_episode_length(model, 1)
    torch.testing.assert_close(logits, logits[:, :1].expand_as(logits), rtol=0, atol=1e-6)
    assert (logits[0, 0] - logits[1, 0]).abs().max() > 1e-4


def test_episode_dropout_eval_is_identity_and_expectation_is_kept():
    drop = EpisodeDropout(0.3)
    x = torch.randn(64, 8)
    assert drop.eval()(x) is x
    drop.train()
    drop.group = 1
    torch.manual_seed(8)
    draws = torch.stack([drop(x) for _ in range(2000)])
    # E[mask / (1 - p)] = 1; the mean of 2000 draws has std |x| * sqrt(p / (1 - p) / 2000) = 0.015 |x|
    torch.testing.assert_close(draws.mean(0), x, rtol=0.08, atol=1e-3)
    assert (draws == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
