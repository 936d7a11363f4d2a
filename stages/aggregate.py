"""Aggregate stage: source bars -> ``data.timeframe_minutes`` bars, clock-aligned to the epoch, incomplete buckets
dropped and counted.

Reads ``<raw>/bars.parquet`` and ``<raw>/meta.json`` (the download stage's ``source_minutes``); writes ``--out`` and
the metrics JSON, each atomically. Run as ``python -m stages.aggregate``.
"""

from __future__ import annotations

import dataclasses
import logging

from diffquant.data.aggregate import aggregate
from diffquant.data.contracts import validate_bars
from diffquant.errors import DataError
from diffquant.io import read_json, read_parquet, write_parquet
from stages._cli import load_params, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.aggregate")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--raw", default="data_source/raw", help="the download stage's folder")
    p.add_argument("--out", default="data_source/bars/bars.parquet", help="aggregated bars")
    p.add_argument("--metrics", default="outputs/metrics/aggregate.json", help="metrics JSON for dvc metrics")
    args = p.parse_args(argv)
    root = repo_root()
    timeframe = load_params(args.params).data.timeframe_minutes

    raw = root / args.raw
    meta = read_json(raw / "meta.json", "download")
    bars = validate_bars(read_parquet(raw / "bars.parquet", "download"), str(raw / "bars.parquet"))
    if not isinstance(meta.get("source_minutes"), int):
        raise DataError(f"{raw / 'meta.json'}: no integer source_minutes; re-run the download stage")

    out, stats = aggregate(bars, meta["source_minutes"], timeframe)
    write_parquet(out, root / args.out)
    write_json(root / args.metrics, {"bars": len(out), **dataclasses.asdict(stats)})
    log.info(
        "%d bars of %d min -> %d bars of %d min (%d incomplete bucket(s) dropped%s)",
        stats.source_bars,
        stats.source_minutes,
        len(out),
        timeframe,
        stats.buckets_dropped,
        f", first: {', '.join(stats.first_dropped)}" if stats.first_dropped else "",
    )


if __name__ == "__main__":
    run_stage(main)
