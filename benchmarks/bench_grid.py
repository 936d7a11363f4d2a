"""The training grid's throughput: a fixed small grid one unit after another, on the local pool and on Ray.

The grid: 2 folds x 3 seeds of the primary policy (iTransformer, context 96, horizon 24, hybrid loss) for 5 epochs,
each fold its own synthetic market (``bench_train``'s samples, a 700-bar val series), validated every epoch. It runs

- ``sequential``: one unit after another in this process, torch's default threads (what the train stage did
  before the grid runner: the reference);
- ``pool:NxT``: the local pool, N spawned worker processes, T threads per unit (no Ray);
- ``ray:T``: a ``local`` Ray runtime on this machine (``train.grid_address: local``), T threads (= CPUs) per unit;
  its wall time includes starting Ray, printed apart,

and prints, per setting, the wall time (worker or Ray start-up included), units per minute and the speed-up over
the reference. Settings with the same threads per unit must train the same models: the benchmark says whether they
did. The sequential and pool settings run without mlflow, dvc or optuna (a GPU machine may lack them).

    python -m benchmarks.bench_grid [--epochs 5] [--settings pool:2x1,ray:1] [--device cpu] [--gpus-per-unit 1]
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
from diffquant.compute.grid import available_cores, run_grid, with_unit_threads
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


def run(cfg: Config, setting: str, out: Path) -> tuple[float, float, int]:
    """``setting`` (sequential, pool:NxT, ray:T) on the grid: wall seconds, of which Ray's start, threads per unit."""
    kind, _, shape = setting.partition(":")
    if kind == "sequential":
        train = dataclasses.replace(cfg.train, workers=1, threads=0)
    elif kind == "pool":
        workers, threads = (int(x) for x in shape.split("x"))
        train = dataclasses.replace(cfg.train, workers=workers, threads=threads)
    elif kind == "ray":
        train = dataclasses.replace(cfg.train, grid_address="local", threads=int(shape))
    else:
        raise SystemExit(f"--settings: {setting!r} is not sequential, pool:NxT or ray:T")
    train = with_unit_threads(dataclasses.replace(cfg, train=train)).train
    works = grid(dataclasses.replace(cfg, train=train), out)
    t0 = time.perf_counter()
    start = 0.0
    if kind == "ray":
        from diffquant.compute.ray_engine import connect  # ray: only for this setting

        connect("local")
        start = time.perf_counter() - t0
    run_grid(works, lambda unit: QuietHooks(), train, progress=False)
    seconds = time.perf_counter() - t0
    if kind == "ray":
        import ray

        ray.shutdown()
    return seconds, start, train.threads


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
    p.add_argument("--settings", default="pool:2x1,ray:1", help="comma-separated pool:WORKERSxTHREADS or ray:THREADS")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--gpus-per-unit", type=float, default=1.0, help="on Ray with a GPU: a GPU's share per unit")
    args = p.parse_args()
    base = Config()
    train = dataclasses.replace(
        base.train,
        epochs=args.epochs,
        val_freq=1,
        seeds=list(SEEDS),
        device=args.device,
        gpus_per_unit=args.gpus_per_unit,
    )
    cfg = dataclasses.replace(base, train=train)
    units = FOLDS * len(SEEDS)
    print(f"grid: {FOLDS} folds x {len(SEEDS)} seeds x {args.epochs} epochs = {units} policy units, primary config")
    print(f"machine: {available_cores()} cores, torch {torch.__version__}, default threads {torch.get_num_threads()}")
    print(f"{'setting':<34} {'wall':>8}  {'units/min':>9}  {'ratio':>6}")
    with tempfile.TemporaryDirectory(prefix="bench-grid-") as tmp:
        done: dict[int, Path] = {}
        reference = 0.0
        for setting in ["sequential", *args.settings.split(",")]:
            out = Path(tmp) / setting.replace(":", "_")
            seconds, start, threads = run(cfg, setting, out)
            reference = reference or seconds
            twin = done.get(threads)
            same = f"  same models as {twin.name}: {same_models(twin, out)}" if twin else ""
            done.setdefault(threads, out)
            label = f"{setting} ({threads} thread(s) per unit)" + (" (reference)" if setting == "sequential" else "")
            started = f"  (Ray start {start:.1f} s)" if start else ""
            rate, speedup = 60 * units / seconds, reference / seconds
            print(f"{label:<34} {seconds:7.1f} s  {rate:9.2f}  {speedup:5.2f}x{same}{started}")


if __name__ == "__main__":
    main()
