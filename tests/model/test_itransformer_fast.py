"""The iTransformer's hand-written attention and fused dropout-residuals equal the plain layer (SDPA, x + drop(y)).

The plain reference below is the encoder layer as it was written before those speed-ups; it runs on the same
parameters, so checkpoints load unchanged and outputs and gradients must agree to float32 rounding. On the CPU the
attention is the C kernel (``channel_attention_cpu``); it is also checked against the torch path it replaces.
"""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from diffquant.model.backbones import channel_attention_cpu as kernel
from diffquant.model.backbones.itransformer import (
    EncoderLayer,
    ITransformer,
    channel_attention,
    channel_attention_torch,
)
from diffquant.model.dropout import set_episode_length

TOL = {"rtol": 1e-5, "atol": 1e-5}


def plain_layer(layer: EncoderLayer, x: Tensor) -> Tensor:
    """The reference: permuted q, k, v through ``F.scaled_dot_product_attention`` and separate dropout + add."""
    n, t, d = x.shape
    q, k, v = layer.qkv(layer.norm1(x)).view(n, t, 3, layer.n_heads, d // layer.n_heads).permute(2, 0, 3, 1, 4)
    attn = F.scaled_dot_product_attention(q, k, v)
    x = x + layer.drop_attn(layer.proj(attn.transpose(1, 2).reshape(n, t, d)))
    return x + layer.drop_out(layer.ff2(layer.drop_ff(F.gelu(layer.ff1(layer.norm2(x))))))


def plain_backbone(model: ITransformer, x: Tensor) -> Tensor:
    tokens = model.embed_norm(model.embed(x))
    for layer in model.layers:
        tokens = plain_layer(layer, tokens)
    return torch.flatten(model.out_norm(tokens), 1)


def run(model: ITransformer, x: Tensor, plain: bool) -> tuple[Tensor, list[Tensor]]:
    """Output and parameter gradients of a fixed non-trivial loss; the same seed draws the same dropout masks."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    out = plain_backbone(model, x) if plain else model(x)
    weights = torch.linspace(-1.0, 1.0, out.shape[1])
    ((out * weights).sum(1) ** 2).mean().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize(("n_features", "d_model", "n_heads"), [(6, 32, 2), (5, 16, 1), (7, 32, 4)])
def test_fast_backbone_equals_plain_reference(train: bool, n_features: int, d_model: int, n_heads: int) -> None:
    torch.manual_seed(0)
    model = ITransformer(n_features, 96, d_model, n_heads, n_layers=4, d_ff=2 * d_model, dropout=0.1)
    model.train(train)
    set_episode_length(model, 4)  # 12 episodes x 4 windows share dropout masks, as in a rollout
    x = torch.randn(48, n_features, 96)
    out, grads = run(model, x, plain=False)
    ref_out, ref_grads = run(model, x, plain=True)
    torch.testing.assert_close(out, ref_out, **TOL)
    for g, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, ref, **TOL)


def test_input_gradient_equals_plain_reference() -> None:
    torch.manual_seed(1)
    model = ITransformer(6, 96, 32, 2, n_layers=2, d_ff=64, dropout=0.1).train()
    x = torch.randn(24, 6, 96, requires_grad=True)
    grads = []
    for plain in (False, True):
        torch.manual_seed(5)
        out = plain_backbone(model, x) if plain else model(x)
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], **TOL)


def test_channel_attention_gradcheck() -> None:
    qkv = torch.randn(3, 6, 24, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: channel_attention(t, 2), (qkv,))


def test_state_dict_keys_unchanged() -> None:
    """Checkpoints written before the fast path must load: same parameter names and shapes as the plain layer."""
    layer = EncoderLayer(32, 2, 64, 0.1)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {
        "norm1.weight": (32,),
        "norm1.bias": (32,),
        "qkv.weight": (96, 32),
        "qkv.bias": (96,),
        "proj.weight": (32, 32),
        "proj.bias": (32,),
        "norm2.weight": (32,),
        "norm2.bias": (32,),
        "ff1.weight": (64, 32),
        "ff1.bias": (64,),
        "ff2.weight": (32, 64),
        "ff2.bias": (32,),
    }


needs_compiler = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler: the torch path is used")


@needs_compiler
def test_kernel_builds_where_a_compiler_is() -> None:
    """With a compiler the CPU runs the kernel (so the tests above test it, not the torch path twice)."""
    assert kernel.available(torch.float32) and kernel.available(torch.float64)


def attention_and_grad(fn, qkv: Tensor, n_heads: int) -> tuple[Tensor, Tensor]:
    qkv = qkv.clone().requires_grad_()
    out = fn(qkv, n_heads)
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)
    (grad,) = torch.autograd.grad((out * weights).sum() + out.square().sum(), qkv)
    return out.detach(), grad


@needs_compiler
@pytest.mark.parametrize(
    ("tokens", "d_model", "n_heads"), [(6, 32, 2), (5, 32, 2), (7, 32, 4), (6, 24, 1), (11, 16, 2)]
)
def test_kernel_equals_the_torch_path(tokens: int, d_model: int, n_heads: int) -> None:
    """The primary shape (6 tokens x 16 dims per head, its own code path) and others (the general loops): both
    float32 paths agree, and the kernel is as close to the float64 result as the torch path is."""
    torch.manual_seed(7)
    qkv = 2.0 * torch.randn(40, tokens, 3 * d_model)
    exact = attention_and_grad(channel_attention_torch, qkv.double(), n_heads)
    fast = attention_and_grad(kernel.channel_attention_cpu, qkv, n_heads)
    plain = attention_and_grad(channel_attention_torch, qkv, n_heads)
    for f, p, x in zip(fast, plain, exact, strict=True):
        scale = x.abs().max().item()
        torch.testing.assert_close(f, p, rtol=0, atol=1e-5 * scale)
        assert (f.double() - x).abs().max() <= 2 * (p.double() - x).abs().max() + 1e-7 * scale


@needs_compiler
@pytest.mark.parametrize(("tokens", "n_heads"), [(6, 2), (5, 3)])
def test_kernel_gradcheck(tokens: int, n_heads: int) -> None:
    qkv = torch.randn(3, tokens, 3 * 16 * n_heads, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: kernel.channel_attention_cpu(t, n_heads), (qkv,))


@needs_compiler
def test_kernel_does_not_depend_on_the_thread_count() -> None:
    """Windows are independent: 1 and 2 threads give the same bits (the torch path's matmuls need not)."""
    qkv = torch.randn(300, 6, 96)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(attention_and_grad(kernel.channel_attention_cpu, qkv, 2))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_without_a_compiler_the_torch_path_runs_and_says_so(monkeypatch, tmp_path, caplog) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv(kernel.CACHE_ENV, str(tmp_path / "cache"))
    kernel._library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=kernel.__name__):
            assert not kernel.available(torch.float32)
        assert "could not be built" in caplog.text and "using the torch path" in caplog.text
        qkv = torch.randn(4, 6, 96)
        assert torch.equal(channel_attention(qkv, 2), channel_attention_torch(qkv, 2))
    finally:
        kernel._library.cache_clear()
