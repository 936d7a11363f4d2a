"""The training step's fast pieces equal their plain forms: foreach AdamW and clipping, the on-device loss mean.

Each fast form is claimed exact (the same floats), so each is compared bit for bit with torch's per-tensor loop on
the primary config's policy, over real optimiser steps of the mirrored batch loss.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from benchmarks.bench_train import NAMES, synthetic_market
from diffquant.config import Config
from diffquant.data.features import mirror_spec
from diffquant.model.policy import PolicyNetwork
from diffquant.sim.losses import Objective
from diffquant.train.episodes import batch_loss, episodes_from_arrays, mirror
from diffquant.train.trainer import LossMeter, clip_gradients, make_optimizer


def step_inputs(cfg: Config, n: int = 8):
    features, close, funding = synthetic_market(np.random.default_rng(0), (n, cfg.window.context + cfg.window.horizon))
    episodes = episodes_from_arrays(features, close, funding, cfg.window.context)
    perm, sign = (torch.as_tensor(a) for a in mirror_spec(NAMES))
    return episodes, mirror(episodes, perm, sign)


def train_steps(model: PolicyNetwork, opt: torch.optim.Optimizer, cfg: Config, fast: bool, steps: int = 3) -> None:
    batch, mirrored = step_inputs(cfg)
    objective = Objective(cfg.loss, cfg.sim.smooth_abs_eps)
    for step in range(steps):
        torch.manual_seed(step)  # the same dropout masks for both runs
        loss, _, _ = batch_loss(model, batch, objective, cfg.sim, cfg.window.horizon, True, mirrored)
        opt.zero_grad(set_to_none=True)
        (10.0 * loss).backward()  # large enough that clipping acts
        if fast:
            norm = clip_gradients(model, cfg.train.grad_clip)
        else:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip, foreach=False)
        assert norm > cfg.train.grad_clip
        opt.step()


def test_foreach_adamw_and_clipping_equal_the_per_tensor_loop() -> None:
    cfg = Config()
    torch.manual_seed(0)
    fast = PolicyNetwork(cfg.model, len(NAMES), cfg.window.context).train()
    plain = copy.deepcopy(fast)
    start = fast.backbone.embed.weight.detach().clone()
    fast_opt, _ = make_optimizer(fast, cfg.train)
    plain_opt, _ = make_optimizer(plain, cfg.train)  # the same warm-up learning rate
    assert fast_opt.param_groups[0]["foreach"] is True
    plain_opt.param_groups[0]["foreach"] = False
    train_steps(fast, fast_opt, cfg, fast=True)
    train_steps(plain, plain_opt, cfg, fast=False)
    for (name, a), b in zip(fast.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(fast.backbone.embed.weight, start)  # the steps did move it


def test_loss_meter_equals_the_mean_of_items() -> None:
    losses = [torch.tensor(v, dtype=torch.float32) for v in np.random.default_rng(0).normal(size=37)]
    meter = LossMeter()
    for loss in losses:
        meter.add(loss.requires_grad_())
    assert meter.pop_mean() == float(np.mean([loss.item() for loss in losses]))
    meter.add(torch.tensor(2.5))
    assert meter.pop_mean() == 2.5  # reset after each epoch


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_matches_cpu() -> None:
    """One step on the GPU (the scan node, foreach clipping and AdamW run there): the clipped gradients agree with
    the CPU's (whose attention is the C kernel) and the step moves every parameter that has a gradient."""
    cfg = Config()
    torch.manual_seed(0)
    cpu = PolicyNetwork(cfg.model, len(NAMES), cfg.window.context).eval()  # no dropout: devices draw other masks
    cuda = copy.deepcopy(cpu).cuda()
    objective = Objective(cfg.loss, cfg.sim.smooth_abs_eps)
    batch, mirrored = step_inputs(cfg)
    grads = []
    for model in (cpu, cuda):
        device = next(model.parameters()).device
        loss, _, _ = batch_loss(
            model, batch.to(device), objective, cfg.sim, cfg.window.horizon, True, mirrored.to(device)
        )
        loss.backward()
        clip_gradients(model, cfg.train.grad_clip)
        grads.append([p.grad.cpu() for p in model.parameters()])
    for g_cpu, g_cuda in zip(*grads, strict=True):
        torch.testing.assert_close(g_cuda, g_cpu, rtol=1e-3, atol=1e-6)
    before = [p.detach().clone() for p in cuda.parameters()]
    opt, _ = make_optimizer(cuda, cfg.train)
    opt.step()
    for p, b, g in zip(cuda.parameters(), before, grads[1], strict=True):
        assert torch.isfinite(p).all() and (g.abs().sum() == 0 or not torch.equal(p, b))
