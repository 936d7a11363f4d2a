"""Split stage: feature table -> train samples and the val/test/backtest series (``diffquant.data.splits``).

Reads the features stage's table of the one asset (``<features>/<SYMBOL>.parquet``); writes
``<out>/{train,train_series,val,test,backtest}.npz`` and the metrics JSON, each atomically.
Run as ``python -m stages.split``.
"""

from __future__ import annotations

import logging

from diffquant.data.splits import EVAL_SPLITS, make_splits
from diffquant.io import read_parquet
from stages._cli import load_params, one_asset, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.split")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--features", default="data_source/features", help="the features stage's folder")
    p.add_argument("--out", default="data_source/split", help="folder for the .npz files")
    p.add_argument("--metrics", default="outputs/metrics/split.json", help="metrics JSON for dvc metrics")
    args = p.parse_args(argv)
    root = repo_root()
    cfg = one_asset(load_params(args.params))

    path = root / args.features / f"{cfg.data.universe[0]}.parquet"
    table = read_parquet(path, "features")
    samples, series, stats = make_splits(
        table, cfg.split, cfg.window, cfg.sim.execution_lag_bars, cfg.data.timeframe_minutes
    )

    out = root / args.out
    samples.save(out / "train.npz")
    for name, s in series.items():
        s.save(out / f"{name}.npz")
    write_json(root / args.metrics, stats)
    log.info(
        "train: %d samples of %d bars from %d bars (%d gap(s)); %s",
        stats["train"]["samples"],
        cfg.window.context + cfg.window.horizon,
        stats["train"]["bars"],
        stats["train"]["gaps"],
        "; ".join(
            f"{n}: {stats[n]['bars']} bars + {stats[n]['warmup_bars']} warm-up, {stats[n]['gaps']} gap(s)"
            for n in EVAL_SPLITS
        ),
    )


if __name__ == "__main__":
    run_stage(main)
