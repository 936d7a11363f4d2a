"""Calibration of the verdict's SPA on simulated returns with a known answer: skill-less strategies whose noise is
correlated with the benchmark and with each other (no strategy beats it in mean), repeated; the share of
repetitions in which SPA rejects at 5% should be about 5%. Prints that share with its 95% (Wilson) interval.

    python -m benchmarks.verdict_calibration [--repetitions 400] [--strategies 100] [--bars 2000] [--reps 500]

``tests/study/test_verdict.py`` runs a smaller version of the same experiment (``skill_less``).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd

from diffquant.study.verdict import Setting, superior_ability

BARS_PER_YEAR = 24 * 365  # hourly bars
SIGMA = 0.01  # per-bar volatility of every series


def skill_less(
    rng: np.random.Generator, bars: int, strategies: int, to_benchmark: float = 0.5, to_each_other: float = 0.5
) -> tuple[pd.DataFrame, pd.Series]:
    """``strategies`` columns of zero-mean returns, each correlated ``to_benchmark`` with the benchmark and sharing a
    common factor (``to_each_other`` of the rest), all with the benchmark's volatility: none has an edge."""
    benchmark = rng.normal(0.0, SIGMA, bars)
    common = rng.normal(0.0, 1.0, (bars, 1))
    own = rng.normal(0.0, 1.0, (bars, strategies))
    noise = math.sqrt(to_each_other) * common + math.sqrt(1.0 - to_each_other) * own
    values = to_benchmark * benchmark[:, None] + math.sqrt(1.0 - to_benchmark**2) * SIGMA * noise
    return pd.DataFrame(values, columns=[f"s{i}" for i in range(strategies)]), pd.Series(benchmark, name="benchmark")


def planted(rng: np.random.Generator, bars: int, strategies: int, edge_sharpe: float) -> tuple[pd.DataFrame, pd.Series]:
    """``skill_less`` strategies that track the benchmark closely (correlation 0.9, as a mostly-long policy does),
    the first given a true annualised Sharpe advantage of ``edge_sharpe`` over the benchmark (same volatility)."""
    frame, benchmark = skill_less(rng, bars, strategies, to_benchmark=0.9)
    frame["s0"] += edge_sharpe / math.sqrt(BARS_PER_YEAR) * SIGMA
    return frame, benchmark


def rejection_rate(repetitions: int, strategies: int, bars: int, reps: int, block: int, seed: int) -> tuple[int, int]:
    """How many of ``repetitions`` skill-less searches SPA (consistent p-value) rejects at 5%."""
    rng = np.random.default_rng(seed)
    rejected = 0
    for i in range(repetitions):
        frame, benchmark = skill_less(rng, bars, strategies)
        result = superior_ability(frame, benchmark, Setting(BARS_PER_YEAR, block, seed + i, reps=reps))
        rejected += result["consistent"] < 0.05
    return rejected, repetitions


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial proportion."""
    p = successes / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repetitions", type=int, default=400)
    p.add_argument("--strategies", type=int, default=100)
    p.add_argument("--bars", type=int, default=2000)
    p.add_argument("--reps", type=int, default=500, help="bootstrap replications per SPA")
    p.add_argument("--block", type=int, default=24, help="mean block of the stationary bootstrap, bars")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    start = time.perf_counter()
    rejected, n = rejection_rate(args.repetitions, args.strategies, args.bars, args.reps, args.block, args.seed)
    low, high = wilson(rejected, n)
    print(
        f"SPA at 5%, {args.strategies} skill-less strategies x {args.bars} bars, {args.reps} bootstrap reps, block "
        f"{args.block}: rejected {rejected} of {n} = {rejected / n:.3f} (95% interval {low:.3f} .. {high:.3f}); "
        f"{time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
