"""Walk-forward speed: batched decisions + hysteresis + engine vs the upstream-style per-bar policy loop.

Primary config (iTransformer, 6 features, context 96, lag 1) on a synthetic quarter of 4,368 30-minute bars plus
its 97 warm-up bars. Prints the median of several runs of each path, their ratio and their largest difference.

    python -m benchmarks.bench_walk_forward [--fast-runs 9] [--reference-runs 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from diffquant.config import Config
from diffquant.data.splits import Series
from diffquant.evaluate.hysteresis import apply_hysteresis
from diffquant.evaluate.walk_forward import (
    Decisions,
    WalkForwardResult,
    policy_decisions,
    policy_decisions_reference,
    walk_forward,
)
from diffquant.model.policy import PolicyNetwork

QUARTER_BARS = 4_368  # 91 days of 30-minute bars
TF_MS = 30 * 60_000


def synthetic_series(context: int, lag: int, seed: int = 0) -> Series:
    rng = np.random.default_rng(seed)
    n = context + lag + QUARTER_BARS
    close = 60_000.0 * np.exp(np.cumsum(rng.normal(0.0, 0.004, n)))
    features = rng.normal(0.0, 1.0, (n, 6)).astype(np.float32)
    funding = np.where(np.arange(n) % 16 == 0, 1e-4, 0.0)
    open_time = 1_751_328_000_000 + TF_MS * np.arange(n, dtype=np.int64)
    names = ["open", "high", "low", "close", "volume", "rolling_vol"]
    return Series(features, close, funding, open_time, context + lag, TF_MS, names)


def median_seconds(fn: Callable[[], WalkForwardResult], runs: int) -> tuple[float, WalkForwardResult]:
    result = fn()  # warm-up (allocator, lazy init)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast-runs", type=int, default=9)
    parser.add_argument("--reference-runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = Config()
    torch.manual_seed(cfg.seed)
    model = PolicyNetwork(cfg.model, 6, cfg.window.context)
    series = synthetic_series(cfg.window.context, cfg.sim.execution_lag_bars)

    def run(decide: Callable[[], Decisions]) -> WalkForwardResult:
        d = decide()
        executed = apply_hysteresis(d.raw, cfg.eval.hysteresis)
        return walk_forward(series, executed, cfg.sim, raw=d.raw, gate=d.gate)

    fast_s, fast = median_seconds(lambda: run(lambda: policy_decisions(model, series)), args.fast_runs)
    ref_s, ref = median_seconds(lambda: run(lambda: policy_decisions_reference(model, series)), args.reference_runs)
    diff = np.nanmax(np.abs(fast.record["raw_position"].to_numpy() - ref.record["raw_position"].to_numpy()))
    print(f"bars: {len(series.close)} ({QUARTER_BARS} quarter), torch threads: {torch.get_num_threads()}")
    print(f"fast      (decisions + hysteresis + walk_forward): {fast_s * 1e3:8.1f} ms  median of {args.fast_runs}")
    print(f"reference (per-bar policy loop, same engine)     : {ref_s * 1e3:8.1f} ms  median of {args.reference_runs}")
    print(f"speed-up: {ref_s / fast_s:.1f}x   max |raw fast - raw reference|: {diff:.2e}")


if __name__ == "__main__":
    main()
