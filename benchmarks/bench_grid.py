"""The training grid's throughput: a fixed small grid one unit after another, and on worker processes.

The grid: 2 folds x 3 seeds of the primary policy (iTransformer, context 96, horizon 24, hybrid loss) for 5 epochs,
each fold its own synthetic market (``bench_train``'s samples, a 700-bar val series), validated every epoch. It runs

- ``sequential``: one unit after another in this process, torch's default threads (what the train stage did
  before the grid runner: the reference);
- ``N workers x T threads``: the grid runner's spawned processes, for each setting asked.

and prints, per setting, the wall time (worker start-up included), units per minute and the speed-up over the
reference. Settings with the same threads per unit must train the same models: the benchmark says whether they
did. Runs without mlflow, dvc or optuna (a GPU machine may lack them).

    python -m benchmarks.bench_grid [--epochs 5] [--settings 1x1,2x1] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_train import LENGTH, NAMES, SAMPLES, synthetic_market
from diffquant.compute.grid import available_cores, run_grid
from diffquant.compute.units import QuietHooks
from diffquant.config import Config
from diffquant.data.splits import Samples, Series
from diffquant.train import checkpoint
from diffquant.train.policy_training import PolicyWork, TrainingData, policy_works

FOLDS, SEEDS, VAL_BARS, TF_MS = 2, (1, 2, 3), 700, 3_600_000


def market(seed: int) -> TrainingData:
    """One fold's synthetic train samples and val series (random walks; features are noise plus the return)."""
    rng = np.random.default_rng(seed)
    features, close, funding = synthetic_market(rng, (SAMPLES, LENGTH))
    samples = Samples(features, close, funding, np.arange(SAMPLES, dtype=np.int64), NAMES)
    val_features, val_close, _ = synthetic_market(rng, (VAL_BARS,))
    val = Series(
        val_features,
        val_close,
        np.zeros(VAL_BARS),
        np.arange(VAL_BARS, dtype=np.int64) * TF_MS,
        Config().window.context + 1,
        TF_MS,
        NAMES,
    )
    return TrainingData(samples, (val,), f"bench fold {seed}")


def grid(cfg: Config, out: Path) -> list[PolicyWork]:
    return [w for fold in range(FOLDS) for w in policy_works(cfg, market(fold), out / f"fold_{fold}", f"fold_{fold}")]


def run(cfg: Config, workers: int, threads: int, out: Path) -> float:
    """Wall seconds of the whole grid on ``workers`` processes of ``threads`` threads (0: torch's default)."""
    train = dataclasses.replace(cfg.train, workers=workers, threads=threads)
    works = grid(dataclasses.replace(cfg, train=train), out)
    default_threads = torch.get_num_threads()
    t0 = time.perf_counter()
    run_grid(works, lambda unit: QuietHooks(), train, progress=False)
    seconds = time.perf_counter() - t0
    torch.set_num_threads(default_threads)
    return seconds


def same_models(a: Path, b: Path) -> bool:
    files = sorted(a.glob("fold_*/seed_*/final.pt"))
    for path in files:
        wa, wb = (checkpoint.load(p)["model_state"] for p in (path, b / path.relative_to(a)))
        if any(not torch.equal(wa[k], wb[k]) for k in wa):
            return False
    return bool(files)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--settings", default="1x1,2x1", help="comma-separated WORKERSxTHREADS to time")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    args = p.parse_args()
    base = Config()
    cfg = dataclasses.replace(
        base,
        train=dataclasses.replace(base.train, epochs=args.epochs, val_freq=1, seeds=list(SEEDS), device=args.device),
    )
    units = FOLDS * len(SEEDS)
    print(f"grid: {FOLDS} folds x {len(SEEDS)} seeds x {args.epochs} epochs = {units} policy units, primary config")
    print(f"machine: {available_cores()} cores, torch {torch.__version__}, default threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory(prefix="bench-grid-") as tmp:
        reference = run(cfg, 1, 0, Path(tmp) / "sequential")
        print(f"{'sequential (reference)':<24} {reference:8.1f} s  {60 * units / reference:6.2f} units/min   1.00x")
        done: dict[int, Path] = {}
        for setting in args.settings.split(","):
            workers, threads = (int(x) for x in setting.split("x"))
            out = Path(tmp) / setting
            seconds = run(cfg, workers, threads, out)
            same = (
                f"  same models as {done[threads].name}: {same_models(done[threads], out)}" if threads in done else ""
            )
            done.setdefault(threads, out)
            label = f"{workers} worker(s) x {threads} thread(s)"
            rate, speedup = 60 * units / seconds, reference / seconds
            print(f"{label:<24} {seconds:8.1f} s  {rate:6.2f} units/min  {speedup:5.2f}x{same}")


if __name__ == "__main__":
    main()
