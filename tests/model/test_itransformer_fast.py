"""The iTransformer's hand-written attention and fused dropout-residuals equal the plain layer (SDPA, x + drop(y)).

The plain reference below is the encoder layer as it was written before those speed-ups; it runs on the same
parameters, so checkpoints load unchanged and outputs and gradients must agree to float32 rounding.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from diffquant.model.backbones.itransformer import EncoderLayer, ITransformer, channel_attention
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
