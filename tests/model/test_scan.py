"""The head's recursion as one autograd node (``head_scan``) equals the plain loop of ``PolicyHead.step``.

Forward: the same ops in the same order, so positions and gates are equal bit for bit. Backward: the adjoint
recursion is written out, so gradients agree to float32 rounding (the loop sums the state's adjoints in another
order), and exactly in the sense of ``gradcheck`` in float64.
"""

from __future__ import annotations

import pytest
import torch

from diffquant.model.policy import PolicyHead
from diffquant.model.scan import head_scan


def make_head(seed: int = 0, dtype: torch.dtype = torch.float32) -> PolicyHead:
    torch.manual_seed(seed)
    head = PolicyHead(8, [16], 0.0, tau_dir=0.7, tau_gate=1.3, gate_bias=-1.0).to(dtype)
    with torch.no_grad():  # the init zeroes the feedback; a real test needs it
        head.state.weight.copy_(torch.tensor([[0.8, -0.6], [0.5, 1.1]], dtype=dtype))
    return head


def grads(head: PolicyHead, logits: torch.Tensor, detach: bool, loop: bool) -> list[torch.Tensor]:
    """Gradients of a loss on both positions and gates w.r.t. the logits and the state weight."""
    logits = logits.clone().requires_grad_()
    scan = head.scan_loop if loop else head.scan
    pos, gate = scan(logits, detach)
    weights = torch.linspace(-1.0, 2.0, pos.shape[1], dtype=pos.dtype)
    loss = (pos * weights).square().sum() + (gate * pos.detach().sign()).sum() + pos.prod(1).sum()
    return list(torch.autograd.grad(loss, (logits, head.state.weight)))


@pytest.mark.parametrize("detach", [False, True])
def test_forward_is_bit_identical(detach: bool) -> None:
    head = make_head()
    logits = 2.0 * torch.randn(32, 24, 2)
    fast = head.scan(logits, detach)
    ref = head.scan_loop(logits, detach)
    assert torch.equal(fast[0], ref[0]) and torch.equal(fast[1], ref[1])


@pytest.mark.parametrize("detach", [False, True])
def test_gradients_equal_the_loop(detach: bool) -> None:
    head = make_head(1)
    logits = 2.0 * torch.randn(64, 24, 2)
    fast, ref = grads(head, logits, detach, loop=False), grads(head, logits, detach, loop=True)
    for g, r in zip(fast, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    assert fast[0][:, 0].abs().sum() > 0 and fast[1].abs().sum() > 0


def test_gradients_cross_steps_only_with_the_state() -> None:
    """A loss on the last position reaches the first step's logits through the state, and only through it."""
    head = make_head(2)
    logits = torch.randn(4, 6, 2, requires_grad=True)
    for detach in (False, True):
        (g,) = torch.autograd.grad(head.scan(logits, detach)[0][:, -1].sum(), logits)
        assert (g[:, 0].abs().sum() > 0) != detach
        assert g[:, -1].abs().sum() > 0


def test_gradcheck_float64() -> None:
    """Full BPTT is the true derivative of the forward (a detached state is not: it drops the path on purpose)."""
    head = make_head(3, torch.float64)
    logits = torch.randn(3, 7, 2, dtype=torch.float64, requires_grad=True)
    weight = head.state.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda lg, w: head_scan(lg, w, 0.7, 1.3, False), (logits, weight))


def test_detached_gradients_equal_the_loop_float64() -> None:
    head = make_head(4, torch.float64)
    logits = torch.randn(5, 9, 2, dtype=torch.float64)
    for g, r in zip(grads(head, logits, True, loop=False), grads(head, logits, True, loop=True), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)
