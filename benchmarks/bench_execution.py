"""What the execution layer costs: a training step (forward + backward of one batch of the primary config) and a
quarter's walk-forward engine, plain against the band + volatility target, in the same process, alternating.

Prints each path's median time and the ratio. The layer adds a loop of `horizon` small steps to a training step
(the band) and a plain-float loop over a quarter's decisions to the engine.

    python -m benchmarks.bench_execution [--runs 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.bench_walk_forward import synthetic_series
from diffquant.config import Config
from diffquant.evaluate.walk_forward import walk_forward
from diffquant.model.policy import PolicyNetwork
from diffquant.sim.losses import Objective
from diffquant.train.episodes import EpisodeExecution, batch_loss, episodes_from_arrays


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = Config().validate()
    ctx, h = cfg.window.context, cfg.window.horizon
    plain = cfg.sim
    costed = dataclasses.replace(plain, band=0.05, vol_target=0.5, vol_window=ctx - 1)

    rng = np.random.default_rng(0)
    close = 60_000.0 * np.exp(np.cumsum(rng.normal(0, 0.004, (64, ctx + h)), axis=1))
    features = rng.normal(0, 1, (64, ctx + h, 6)).astype(np.float32)
    funding = np.zeros((64, ctx + h))
    execution = EpisodeExecution(1, costed.vol_target, costed.vol_window, cfg.data.timeframe_minutes)
    batch = episodes_from_arrays(features, close, funding, ctx, execution)
    torch.manual_seed(0)
    model = PolicyNetwork(cfg.model, 6, ctx)
    objective = Objective(cfg.loss, plain.smooth_abs_eps)

    def step(sim: object) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            batch_loss(model, batch, objective, sim, h, True)[0].backward()

        return run

    series = synthetic_series(ctx, plain.execution_lag_bars)
    executed = np.tanh(rng.normal(0, 1, len(series.close)))
    rows = []
    for name, plain_fn, costed_fn in (
        ("training step (64 episodes)", step(plain), step(costed)),
        (
            "walk-forward quarter",
            lambda: walk_forward(series, executed, plain),
            lambda: walk_forward(series, executed, costed),
        ),
    ):
        plain_fn(), costed_fn()  # warm up
        a, b = [], []
        for _ in range(args.runs):
            a.append(median_seconds(plain_fn, 1))
            b.append(median_seconds(costed_fn, 1))
        rows.append((name, statistics.median(a), statistics.median(b)))
    for name, a, b in rows:
        print(f"{name:>28}: plain {a * 1e3:8.2f} ms | band + vol target {b * 1e3:8.2f} ms | ratio {b / a:5.2f}")


if __name__ == "__main__":
    main()
