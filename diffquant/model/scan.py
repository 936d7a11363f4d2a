"""The policy head's recursion over an episode as one autograd node, with its backward written out.

Step t of ``PolicyHead.scan`` turns the state-free logits (direction, gate) and the state s_t = (p_{t-1}, d_{t-1})
(previous position, previous change) into

    z_t = l_t + W s_t,   u_t = tanh(z_t[0] / tau_dir),   g_t = sigmoid(z_t[1] / tau_gate),   p_t = u_t g_t,
    d_t = p_t - p_{t-1}   (p_{-1} = d_{-1} = 0).

Autograd records ~12 nodes per step, ~300 for an episode of 24 decisions, each a handful of tiny ops on (B,) tensors
forward and backward: on a CPU these cost more than their arithmetic. Here the forward runs the same ops as the plain
loop (the same floats, bit for bit) without recording them, and the backward is the adjoint recursion below: all
but the position adjoints for every step at once, those by a recursion of two fused ops a step, and the weight's
gradient one matmul at the end. With ``detach_state`` the state carries no gradient and the backward has no loop.

Adjoints (x̄ = dLoss/dx): the direct gradients of p_t and g_t come in; p_t enters s_{t+1} as (p_t, p_t - p_{t-1})
and s_{t+2} as (p_{t+1}, p_{t+1} - p_t), so with s̄_t = z̄_t W

    p̄_t = p̄_t(direct) + s̄_{t+1}[0] + s̄_{t+1}[1] - s̄_{t+2}[1],
    z̄_t = (p̄_t g_t (1 - u_t^2) / tau_dir,  (ḡ_t + p̄_t u_t) (1 - g_t) g_t / tau_gate),   l̄_t = z̄_t,   W̄ = sum z̄_t s_tᵀ.

z̄_t is affine in p̄_t (z̄_t = p̄_t c_t + e_t), so s̄_t = p̄_t m_t + n_t and p̄ obeys a linear recursion in t.

tests/model/test_scan.py checks the gradients against the plain loop under autograd and by ``gradcheck`` in float64.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


class _HeadScan(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, weight: Tensor, tau_dir: float, tau_gate: float, detach_state: bool
    ) -> tuple[Tensor, Tensor]:
        prev = logits.new_zeros(logits.shape[0])
        delta = torch.zeros_like(prev)
        states, tanhs, positions, gates = [], [], [], []
        for t in range(logits.shape[1]):
            state = torch.stack([prev, delta], dim=-1)
            z = logits[:, t] + F.linear(state, weight)
            gate = torch.sigmoid(z[..., 1] / tau_gate)
            direction = torch.tanh(z[..., 0] / tau_dir)
            pos = direction * gate
            states.append(state)
            tanhs.append(direction)
            positions.append(pos)
            gates.append(gate)
            delta, prev = pos - prev, pos
        ctx.save_for_backward(weight, torch.stack(states, 1), torch.stack(tanhs, 1), torch.stack(gates, 1))
        ctx.taus, ctx.detach_state = (tau_dir, tau_gate), detach_state
        return torch.stack(positions, 1), torch.stack(gates, 1)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_pos: Tensor, grad_gate: Tensor
    ) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        weight, states, u, g = ctx.saved_tensors
        tau_dir, tau_gate = ctx.taus
        # z̄_t = p̄_t c_t + e_t: c_t, e_t are known for every step at once; only p̄ needs the recursion
        d_sigmoid = (1.0 - g) * g / tau_gate
        c = torch.stack([g * (1.0 - u * u) / tau_dir, u * d_sigmoid], -1)  # (B, H, 2)
        e = torch.stack([torch.zeros_like(grad_gate), grad_gate * d_sigmoid], -1)
        p_bar = grad_pos
        if not ctx.detach_state:
            p_bar = _position_adjoints(grad_pos, c @ weight, e @ weight)
        grad_z = torch.addcmul(e, p_bar.unsqueeze(-1), c)
        grad_logits = grad_z if ctx.needs_input_grad[0] else None
        grad_weight = grad_z.reshape(-1, 2).T @ states.reshape(-1, 2) if ctx.needs_input_grad[1] else None
        return grad_logits, grad_weight, None, None, None


def _position_adjoints(direct: Tensor, m: Tensor, n: Tensor) -> Tensor:
    """p̄ (B, H) from the direct gradients and s̄_t = p̄_t m_t + n_t (both (B, H, 2)), last step first.

    p̄_{t-1} = direct_{t-1} + s̄_t[0] + s̄_t[1] - s̄_{t+1}[1]: a second-order linear recursion, two fused ops a step
    on (H, B) rows (contiguous per step).
    """
    gain = (m[..., 0] + m[..., 1]).T.contiguous()  # p̄_t's weight in p̄_{t-1}
    back = torch.zeros_like(gain)  # p̄_t's weight in p̄_{t-2}: -m_t[1]
    back[:-1] = m[:, 1:, 1].T
    base = direct.T.contiguous()
    base[:-1] += n[:, 1:, 0].T + n[:, 1:, 1].T
    base[:-2] -= n[:, 2:, 1].T
    out = torch.empty_like(base)
    out[-1] = base[-1]
    for t in range(base.shape[0] - 1, 0, -1):
        row = torch.addcmul(base[t - 1], gain[t], out[t], out=out[t - 1])
        if t + 1 < base.shape[0]:
            row.addcmul_(back[t], out[t + 1], value=-1.0)
    return out.T


def head_scan(
    logits: Tensor, weight: Tensor, tau_dir: float, tau_gate: float, detach_state: bool
) -> tuple[Tensor, Tensor]:
    """logits (B, H, 2), state weight (2, 2) -> positions (B, H), gates (B, H): ``PolicyHead.scan`` without a book."""
    return _HeadScan.apply(logits, weight, tau_dir, tau_gate, detach_state)
