"""Training speed: one epoch with the batched rollout vs the upstream-style step-by-step rollout, and vs older code.

Primary config (iTransformer, 6 features, context 96, horizon 24, hybrid loss, AdamW, clipping) on 910 synthetic
samples of 120 bars: 14 batches of 64, mirror augmentation with probability 0.5 per batch, seeded per epoch as the
trainer does. The fast path is ``batch_loss`` -> ``model.rollout`` (all B x H windows in one backbone call); the
reference path is ``batch_loss(..., reference=True)`` (one backbone call per step, like upstream). The reference is
timed per batch on a few batches with and without the mirror half and scaled to the epoch's mix of both (said so in
the output); the fast path is reported both as whole epochs and scaled to the same mix, which the ratio uses.
Per-batch medians: the machine may be shared (the load averages before and after are printed). ``--profile N``
also prints the N most expensive ops of one fast epoch (torch.profiler, self CPU time).

``--baseline DIR`` also times whole epochs of another checkout (e.g. ``git worktree add --detach /tmp/base
ed64a1b``, the code before the training-step work of issue 26) against this tree, each in a fresh process, the two
alternating ``--baseline-runs`` times, and prints the medians and their ratio: "today's epoch vs the new one" on
the same machine in one run. Both sides time ``Setup.step`` of their own tree (the optimiser step, clipping and the
model's code as their trainer runs them).

``--device cuda`` (or ``auto``) runs both paths on the GPU, synchronising before each step's clock stops.

    python -m benchmarks.bench_train [--fast-epochs 5] [--reference-batches 4] [--threads N] [--profile N]
                                     [--device cpu|cuda|auto] [--baseline DIR [--baseline-runs 5]
                                     [--baseline-epochs 2]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffquant.config import Config
from diffquant.data.features import mirror_spec
from diffquant.model.backbones import channel_attention_cpu
from diffquant.model.policy import PolicyNetwork
from diffquant.sim.losses import Objective
from diffquant.train.episodes import EpisodeBatch, batch_loss, episodes_from_arrays, mirror
from diffquant.train.trainer import clip_gradients, make_optimizer, resolve_device

SAMPLES, LENGTH = 910, 120
NAMES = ["open", "high", "low", "close", "volume", "rolling_vol"]


def synthetic_market(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random-walk ``close`` of ``shape`` (bars last), noise features whose 4th channel is the bar's return, and
    funding every 16 bars: (features, close, funding)."""
    returns = rng.normal(0.0, 0.004, shape)
    close = 60_000.0 * np.exp(np.cumsum(returns, axis=-1))
    features = rng.normal(0.0, 1.0, (*shape, len(NAMES))).astype(np.float32)
    features[..., 3] = returns
    funding = np.where(np.arange(shape[-1]) % 16 == 0, 1e-4, 0.0) * np.ones(shape)
    return features, close, funding


def synthetic_samples(seed: int = 0) -> EpisodeBatch:
    features, close, funding = synthetic_market(np.random.default_rng(seed), (SAMPLES, LENGTH))
    return episodes_from_arrays(features, close, funding, Config().window.context)


class Setup:
    def __init__(self, cfg: Config | None = None, device: torch.device | None = None) -> None:
        """The primary config unless ``cfg`` (benchmarks/bench_backbones.py swaps the backbone), on ``device``."""
        cfg = cfg or Config()
        self.device = device or torch.device("cpu")
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.model = PolicyNetwork(cfg.model, len(NAMES), cfg.window.context).to(self.device)
        self.opt, _ = make_optimizer(self.model, cfg.train)
        self.objective = Objective(cfg.loss, cfg.sim.smooth_abs_eps)
        self.episodes = synthetic_samples().to(self.device)
        self.perm, self.sign = (torch.as_tensor(a, device=self.device) for a in mirror_spec(NAMES))

    def plan(self, epoch: int) -> list[tuple[torch.Tensor, bool]]:
        """The epoch's batches and mirror draws, drawn as the trainer draws them."""
        t = self.cfg.train
        torch.manual_seed(self.cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.episodes))
        plan = []
        for b in range(len(self.episodes) // t.batch_size):
            use_mirror = t.mirror and torch.rand(()).item() < t.mirror_prob
            plan.append((order[b * t.batch_size : (b + 1) * t.batch_size], use_mirror))
        return plan

    def step(self, idx: torch.Tensor, use_mirror: bool, reference: bool) -> float:
        """One optimiser step, as ``trainer._train_epoch`` takes it; returns its wall time."""
        t0 = time.perf_counter()
        batch = self.episodes.index(idx.to(self.device))
        mirrored = mirror(batch, self.perm, self.sign) if use_mirror else None
        loss, _, _ = batch_loss(
            self.model,
            batch,
            self.objective,
            self.cfg.sim,
            self.cfg.window.horizon,
            self.cfg.train.full_bptt,
            mirrored,
            reference=reference,
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(self.model, self.cfg.train.grad_clip)
        self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0


# Run with the checkout as working directory and on sys.path: whole epochs of that tree's own ``Setup.step``.
# Only names both old and new trees have (Setup, plan, step), so one snippet times either.
EPOCH_TIMER = """
import json, sys, time, torch
from benchmarks.bench_train import Setup
torch.set_num_threads(int(sys.argv[1]))
s = Setup()
s.model.train()
for idx, m in s.plan(0)[:2]:
    s.step(idx, m, reference=False)
out = []
for e in range(int(sys.argv[2])):
    cpu = time.process_time()
    wall = sum(s.step(idx, m, reference=False) for idx, m in s.plan(e))
    out.append([wall, time.process_time() - cpu])
print(json.dumps(out))
"""


def epoch_times(tree: Path, threads: int, epochs: int) -> list[tuple[float, float]]:
    """(wall, process CPU) seconds of each of ``epochs`` whole epochs of ``tree``'s code, in a fresh process, after
    two warm-up steps."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", EPOCH_TIMER, str(threads), str(epochs)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return [tuple(pair) for pair in json.loads(done.stdout.strip().splitlines()[-1])]


def compare_with(baseline: Path, threads: int, runs: int, epochs: int) -> None:
    """The baseline checkout and this tree alternately, ``runs`` times each: median epoch seconds and their ratio.

    Wall time is what a user waits; the process's CPU time is printed beside it because on a shared machine it moves
    less (at 1 thread it is the work itself, not the wait for a core; at more threads it also counts OpenMP's
    spin-waits, which grow with the load).
    """
    here = Path(__file__).resolve().parents[1]
    commit = subprocess.run(
        ["git", "-C", str(baseline), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    times: dict[str, list[tuple[float, float]]] = {"baseline": [], "this": []}
    for _ in range(runs):
        for name, tree in (("baseline", baseline), ("this", here)):
            times[name] += epoch_times(tree, threads, epochs)
    (old_wall, old_cpu), (new_wall, new_cpu) = (
        [statistics.median(v) for v in zip(*times[k], strict=True)] for k in ("baseline", "this")
    )
    print(
        f"today's code ({commit or '?'} at {baseline}) vs this tree, {threads} threads, {runs} alternating runs x "
        f"{epochs} epochs each in fresh processes: median {old_wall:.2f} s vs {new_wall:.2f} s per epoch: "
        f"{old_wall / new_wall:.2f}x (process CPU time: {old_cpu:.2f} s vs {new_cpu:.2f} s: {old_cpu / new_cpu:.2f}x)"
    )
    for name, values in times.items():
        print(f"  {name:8s} epochs, wall / CPU s: " + " ".join(f"{w:.2f}/{c:.2f}" for w, c in values))


def load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg()) + f" on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast-epochs", type=int, default=5)
    parser.add_argument("--reference-batches", type=int, default=4, help="timed per kind (mirror / no mirror)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--profile", type=int, default=0, help="print the top N ops of one fast epoch (0: off)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--baseline", type=Path, help="a checkout of older code to time against this tree")
    parser.add_argument("--baseline-runs", type=int, default=5, help="fresh processes per side, alternating")
    parser.add_argument("--baseline-epochs", type=int, default=2, help="whole epochs per process")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"before: {load()}")
    t0 = time.perf_counter()
    kernel = channel_attention_cpu.available(torch.float32)
    attention = f"C kernel, built or loaded in {time.perf_counter() - t0:.2f} s" if kernel else "torch path"
    s = Setup(device=resolve_device(args.device))
    s.model.train()
    print(
        f"torch {torch.__version__}, {s.device}, {torch.get_num_threads()} threads; primary config, "
        f"{SAMPLES} samples x {LENGTH} bars x {len(NAMES)} features, batch {s.cfg.train.batch_size}, "
        f"mirror p={s.cfg.train.mirror_prob}; CPU attention: {attention}"
    )

    for idx, use_mirror in s.plan(0)[:2]:  # warm-up (allocator, lazy init)
        s.step(idx, use_mirror, reference=False)

    fast, fast_kind = [], {True: [], False: []}
    for epoch in range(args.fast_epochs):
        total = 0.0
        for idx, m in s.plan(epoch):
            seconds = s.step(idx, m, reference=False)
            fast_kind[m].append(seconds)
            total += seconds
        fast.append(total)
    plan = s.plan(0)
    n_mirror = sum(m for _, m in plan)
    # both paths on epoch 0's mix of batches with and without the mirror half (the mix varies by epoch)
    fast_epoch = n_mirror * statistics.median(fast_kind[True]) + (len(plan) - n_mirror) * statistics.median(
        fast_kind[False]
    )
    print(
        f"fast      (rollout, 1 backbone call per batch): {statistics.median(fast):7.2f} s/epoch  (median of "
        f"{len(fast)} whole epochs of {len(plan)} batches; {fast_epoch:.2f} s on epoch 0's mix, {n_mirror} with "
        "mirror)"
    )

    per_kind: dict[bool, list[float]] = {True: [], False: []}
    for epoch in range(100):
        for idx, m in s.plan(epoch):
            if len(per_kind[m]) < args.reference_batches:
                per_kind[m].append(s.step(idx, m, reference=True))
        if all(len(v) >= args.reference_batches for v in per_kind.values()):
            break
    t_mirror, t_plain = statistics.median(per_kind[True]), statistics.median(per_kind[False])
    ref_epoch = n_mirror * t_mirror + (len(plan) - n_mirror) * t_plain
    print(
        f"reference (rollout_reference, 1 backbone call per step): {ref_epoch:7.2f} s/epoch  (scaled: median "
        f"{t_plain:.3f} s/batch without mirror, {t_mirror:.3f} s/batch with it, {args.reference_batches} batches "
        f"each, x {len(plan) - n_mirror} + {n_mirror})"
    )
    print(f"ratio reference / fast (same mix): {ref_epoch / fast_epoch:.1f}x")

    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for idx, m in plan:
                s.step(idx, m, reference=False)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))
    if args.baseline:
        compare_with(args.baseline.resolve(), torch.get_num_threads(), args.baseline_runs, args.baseline_epochs)
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
