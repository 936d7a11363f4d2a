"""Every backbone behind the one interface: shape and dtype, causality, gradients, device, determinism, config.

Small sizes (a 40-bar window of 5 features) keep each case well under a second; test_policy.py runs the default
sizes through the policy (fast rollout == reference, full_bptt, causality of the rollout).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import torch

from diffquant.config import SERIES_BACKBONES, BackboneName, ModelConfig, from_dict
from diffquant.model.backbones import build_backbone
from diffquant.model.policy import (
    PolicyNetwork,
    backbone_features,
    causal_zscore,
    count_parameters,
    sliding_windows,
    zscore,
)

BACKBONES = typing.get_args(BackboneName)
CTX, F = 40, 5  # 40 bars: two chunks of the linear attention, several PatchTST patches
DOCS = Path(__file__).resolve().parents[2] / "docs" / "backbones.md"

SMALL = {
    "itransformer": {"d_model": 8, "n_heads": 2, "n_layers": 1, "d_ff": 16},
    "lstm": {"hidden": 8, "layers": 2},
    "patchtst": {"patch_len": 8, "stride": 4, "d_model": 8, "n_heads": 2, "n_layers": 2, "d_ff": 16},
    "dlinear": {"kernel": 7, "d_out": 4},
    "tcn": {"channels": 8, "levels": 3, "kernel": 3},
    "vsn_lstm": {"d_model": 4, "hidden": 8, "layers": 2},
    "linear_attention": {"d_model": 8, "n_heads": 2, "n_layers": 2, "d_ff": 16, "conv_kernel": 3},
}


def small_config(backbone: str) -> ModelConfig:
    """The model section of a params file selecting ``backbone`` at a small size, loaded and validated."""
    params = {"model": {"backbone": backbone, backbone: SMALL[backbone], "head": {"dense": [8]}}}
    return from_dict(params).model


def small_backbone(backbone: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_backbone(small_config(backbone), F, CTX).to(dtype)


def windows(n: int, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, F, ctx) channel-major raw windows of varied scales."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, F, CTX, generator=gen) * torch.rand(n, F, 1, generator=gen) * 10).to(dtype)


def test_every_backbone_has_a_small_size_here():
    assert set(SMALL) == set(BACKBONES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_output_shape_and_dtype(backbone, dtype):
    model = small_backbone(backbone, dtype=dtype).eval()
    out = backbone_features(model, windows(7, dtype=dtype))
    assert out.shape == (7, model.out_dim) and out.dtype == dtype
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_window_sees_only_itself(backbone):
    """A window's features do not depend on the other windows of the batch (no batch statistics), so the rows after
    a window's end, which only later windows hold, cannot reach it."""
    model = small_backbone(backbone).eval()
    x = windows(6)
    changed = x.clone()
    changed[3:] = 5 * torch.randn_like(changed[3:])
    with torch.no_grad():
        a, b = backbone_features(model, x), backbone_features(model, changed)
    torch.testing.assert_close(a[:3], b[:3], rtol=0, atol=0)
    assert (a[3:] - b[3:]).abs().max() > 1e-3


@pytest.mark.parametrize("backbone", BACKBONES)
def test_rollout_is_causal(backbone):
    """Decision t sees rows t .. t+ctx-1: redrawing rows >= t+ctx leaves decisions 0..t as they were."""
    horizon, t = 8, 3
    torch.manual_seed(0)
    policy = PolicyNetwork(small_config(backbone), F, CTX).eval()
    features = torch.randn(2, CTX + horizon, F)
    changed = features.clone()
    changed[:, t + CTX :] = 5 * torch.randn_like(changed[:, t + CTX :])
    with torch.no_grad():
        a, _ = policy.rollout(features, horizon, True)
        b, _ = policy.rollout(changed, horizon, True)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().max() > 1e-4


@pytest.mark.parametrize("backbone", BACKBONES)
def test_gradient_reaches_every_parameter(backbone):
    model = small_backbone(backbone).train()
    out = backbone_features(model, windows(8))
    weights = torch.linspace(-1.0, 1.0, out.shape[1])
    ((out * weights).sum(1) ** 2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


@pytest.mark.parametrize("backbone", BACKBONES)
def test_deterministic_under_a_fixed_seed(backbone):
    """The same seed builds the same weights and, in training mode, draws the same dropout: equal outputs and grads."""
    runs = []
    for _ in range(2):
        model = small_backbone(backbone, seed=5).train()
        torch.manual_seed(6)
        out = backbone_features(model, windows(8))
        out.square().sum().backward()
        runs.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backbone", BACKBONES)
def test_cuda_matches_cpu(backbone):
    model = small_backbone(backbone).eval()
    x = windows(16)
    cpu = backbone_features(model, x)
    cuda = backbone_features(model.cuda(), x.cuda())
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-4, atol=1e-4)
    cuda.square().sum().backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in model.parameters())


def documented_counts() -> dict[str, int]:
    """docs/backbones.md's table: backbone -> parameters of the whole policy at the defaults (6 features, 96 bars)."""
    rows = re.findall(r"^\| `(\w+)` \|.*\| ([\d,]+) \|$", DOCS.read_text(), flags=re.MULTILINE)
    return {name: int(count.replace(",", "")) for name, count in rows}


def test_documented_parameter_counts():
    counts = {b: count_parameters(PolicyNetwork(ModelConfig(backbone=b), 6, 96)) for b in BACKBONES}
    assert documented_counts() == counts


@pytest.mark.parametrize("backbone", BACKBONES)
def test_params_select_every_backbone_at_its_defaults(backbone):
    cfg = from_dict({"model": {"backbone": backbone}}).model
    assert cfg == dataclasses.replace(ModelConfig(), backbone=backbone)
    assert type(build_backbone(cfg, 6, 96)) is type(build_backbone(small_config(backbone), F, CTX))


# -- the series path (model.series): tcn, vsn_lstm, linear_attention ------------------------------------------------


def series_layout(model: torch.nn.Module, bars: torch.Tensor) -> torch.Tensor:
    """(B, T, F) bars in the layout ``model`` takes."""
    return bars.transpose(1, 2).contiguous() if model.channel_major else bars


def series_policy(backbone: str, seed: int = 0) -> PolicyNetwork:
    torch.manual_seed(seed)
    policy = PolicyNetwork(dataclasses.replace(small_config(backbone), series=True), F, CTX)
    with torch.no_grad():
        policy.head.state.weight.copy_(torch.tensor([[0.8, -0.5], [0.6, 0.4]]))  # the recursion matters
    return policy


@pytest.mark.parametrize("backbone", SERIES_BACKBONES)
def test_series_path_is_causal(backbone):
    """Redrawing bar t + 1 and later changes no output at bars <= t: the backbone's ``forward_series`` and the
    policy's ``encode_series`` (with the causal z-score) alike."""
    t = 57  # inside the second linear-attention chunk
    model = small_backbone(backbone).eval()
    policy = series_policy(backbone).eval()
    bars = torch.randn(2, 90, F)
    changed = bars.clone()
    changed[:, t + 1 :] = 5 * torch.randn_like(changed[:, t + 1 :])
    with torch.no_grad():
        for run in (lambda x: model.forward_series(series_layout(model, x)), policy.encode_series):
            a, b = run(bars), run(changed)
            torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=0)
            assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().max() > 1e-3


@pytest.mark.parametrize("backbone", SERIES_BACKBONES)
def test_window_features_are_the_series_features_of_the_last_bar(backbone):
    model = small_backbone(backbone).eval()
    x = series_layout(model, torch.randn(3, CTX, F))
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_series(x)[:, -1], rtol=1e-5, atol=1e-5)


def test_causal_zscore_is_the_window_zscore_of_the_last_bar():
    """From bar ctx - 1 on, bar t is normalised by the statistics of the window ending at t, as the window path does."""
    bars = torch.randn(2, 70, F, dtype=torch.float64) * 3 + 1
    out = causal_zscore(bars, CTX)
    windows = sliding_windows(bars, CTX)  # (B, T - ctx + 1, F, ctx)
    expected = zscore(windows.contiguous())[..., -1]  # (B, T - ctx + 1, F)
    torch.testing.assert_close(out[:, CTX - 1 :], expected, rtol=1e-12, atol=1e-12)
    assert (out[:, 0] == 0).all()  # the first bar: a window of bar 0 repeated


@pytest.mark.parametrize("full_bptt", [True, False])
@pytest.mark.parametrize("backbone", SERIES_BACKBONES)
def test_series_rollout_equals_reference(backbone, full_bptt):
    """The one-pass series rollout equals recomputing each decision from the episode's prefix: positions and every
    parameter's gradient."""
    horizon = 6
    policy = series_policy(backbone).eval()
    features = torch.randn(3, CTX + horizon, F)
    runs = []
    for rollout in (policy.rollout, policy.rollout_reference):
        policy.zero_grad()
        pos, _ = rollout(features, horizon, full_bptt)
        (pos * torch.linspace(-1.0, 1.0, horizon)).sum().square().backward()
        runs.append((pos.detach(), {n: p.grad.clone() for n, p in policy.named_parameters()}))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=1e-5)
    assert runs[0][0].std() > 1e-3
    for name, g in runs[0][1].items():
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, runs[1][1][name], rtol=1e-4, atol=1e-5, msg=name)
    assert all(g.abs().max() > 0 for g in runs[0][1].values())


@pytest.mark.parametrize("backbone", SERIES_BACKBONES)
def test_series_rollout_differs_from_the_window_rollout(backbone):
    """The flag does something: the series path sees the episode's earlier rows and normalises per bar."""
    features = torch.randn(2, CTX + 4, F)
    window = series_policy(backbone).eval()
    window.series = False
    with torch.no_grad():
        a, _ = series_policy(backbone).eval().rollout(features, 4, True)
        b, _ = window.rollout(features, 4, True)
    assert (a - b).abs().max() > 1e-5  # float32 rounding of one computation done two ways stays below 1e-6
