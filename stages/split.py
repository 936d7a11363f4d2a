"""Split stage: every asset's feature table -> the fold plan and each fold's cut (``diffquant.study.fold_data``).

``folds.scheme`` plans the folds (``single``: the ``split:`` quarters, test and backtest as two folds sharing train
and val; ``expanding`` / ``rolling``: walk-forward). Reads the features stage's ``<features>/<SYMBOL>.parquet``;
writes ``<out>/<fold>/<SYMBOL>/{train,train_series,val,test}.npz`` and ``<out>/plan.json`` (which assets each fold
holds, and why any is left out), and the metrics JSON (bars, gaps, samples per fold and asset), each atomically.
Run as ``python -m stages.split``.
"""

from __future__ import annotations

import logging

from diffquant.io import read_parquet
from diffquant.study.fold_data import cut_folds, write_folds
from stages._cli import load_params, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.split")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--features", default="data_source/features", help="the features stage's folder")
    p.add_argument("--out", default="data_source/split", help="the fold plan and one folder per fold")
    p.add_argument("--metrics", default="outputs/metrics/split.json", help="metrics JSON for dvc metrics")
    args = p.parse_args(argv)
    root = repo_root()
    cfg = load_params(args.params)

    tables = {s: read_parquet(root / args.features / f"{s}.parquet", "features") for s in cfg.data.universe}
    folds = cut_folds(cfg, tables)
    write_folds(folds, root / args.out)
    metrics = {d.fold.name: {**{s: a.stats for s, a in d.assets.items()}, "excluded": d.excluded} for d in folds}
    write_json(root / args.metrics, metrics)
    for d in folds:
        log.info(
            "fold %s: train %s .. %s, test %s .. %s; %d asset(s), %d train samples%s",
            d.fold.name,
            *(d.fold.describe()[k] for k in ("train_start", "train_end", "test_start", "test_end")),
            len(d.assets),
            sum(len(a.samples) for a in d.assets.values()),
            f"; left out: {', '.join(d.excluded)}" if d.excluded else "",
        )


if __name__ == "__main__":
    run_stage(main)
