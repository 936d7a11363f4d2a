"""Backbone speed: a training epoch and a walk-forward decision for every backbone, against the iTransformer.

Training: the primary config with ``model.backbone`` swapped (defaults of each backbone's section), on
bench_train's synthetic samples; the fast rollout's per-batch median over a few batches (mirror draws as the trainer
makes them), scaled to the epoch's batches. Walk-forward: ``policy_decisions`` on bench_walk_forward's synthetic
quarter, median of a few runs, per decision. Backbones with a series path are also timed with ``model.series``
(one causal pass per episode / series instead of one pass per window). Ratios are to the iTransformer's window path.

    python -m benchmarks.bench_backbones [--batches 4] [--runs 3] [--threads N] [--only tcn,dlinear]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import typing

import torch

from benchmarks.bench_train import Setup
from benchmarks.bench_walk_forward import synthetic_series
from diffquant.config import SERIES_BACKBONES, BackboneName, Config
from diffquant.evaluate.walk_forward import policy_decisions
from diffquant.model.policy import count_parameters


def variants(only: list[str]) -> list[tuple[str, Config]]:
    """(label, config) for every backbone, plus ``+series`` for those with a series path; the iTransformer first."""
    out = []
    for name in typing.get_args(BackboneName):
        if only and name not in only and name != "itransformer":
            continue
        base = Config()
        out.append((name, dataclasses.replace(base, model=dataclasses.replace(base.model, backbone=name))))
        if name in SERIES_BACKBONES:
            series = dataclasses.replace(base.model, backbone=name, series=True)
            out.append((f"{name}+series", dataclasses.replace(base, model=series)))
    return out


def epoch_seconds(s: Setup, batches: int) -> float:
    """The fast path's median optimiser step, times the epoch's batch count."""
    plan = s.plan(0)
    s.step(*plan[0][:2], reference=False)  # warm-up
    times = [s.step(idx, m, reference=False) for idx, m in plan[1 : batches + 1]]
    return statistics.median(times) * len(plan)


def decision_seconds(s: Setup, runs: int) -> float:
    series = synthetic_series(s.cfg.window.context, s.cfg.sim.execution_lag_bars)
    policy_decisions(s.model, series)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        policy_decisions(s.model, series)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / (len(series.close) - s.cfg.window.context + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4, help="timed training batches per backbone")
    parser.add_argument("--runs", type=int, default=3, help="timed walk-forward runs per backbone")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--only", default="", help="comma-separated backbones (the iTransformer always runs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; primary config, backbone swapped")
    print(f"{'backbone':<24}{'params':>9}{'s/epoch':>9}{'x itr':>7}{'us/decision':>13}{'x itr':>7}")
    ref: tuple[float, float] | None = None
    for label, cfg in variants([b for b in args.only.split(",") if b]):
        s = Setup(cfg)
        s.model.train()
        epoch = epoch_seconds(s, args.batches)
        decision = decision_seconds(s, args.runs)
        ref = ref or (epoch, decision)
        print(
            f"{label:<24}{count_parameters(s.model):>9,}{epoch:>9.2f}{epoch / ref[0]:>7.2f}"
            f"{decision * 1e6:>13.1f}{decision / ref[1]:>7.2f}"
        )


if __name__ == "__main__":
    main()
