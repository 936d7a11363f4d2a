"""Aggregate stage: every asset's source bars (and mark-price bars, user columns) -> ``data.timeframe_minutes``,
clock-aligned to the epoch, incomplete buckets dropped and counted.

Reads the download stage's ``<raw>/<SYMBOL>/`` folders and ``<raw>/market/``; writes ``<out>/<SYMBOL>/bars.parquet``
(and ``mark.parquet``, ``columns.parquet`` when the features read them), ``<out>/market/<SYMBOL>.parquet`` for the
market family, and the metrics JSON with a line per asset, each atomically. Run as ``python -m stages.aggregate``.
"""

from __future__ import annotations

import dataclasses
import logging

from diffquant.data.inputs import at_timeframe, market_bars, read_raw, read_raw_market, write_market, write_tables
from stages._cli import load_params, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.aggregate")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--raw", default="data_source/raw", help="the download stage's folder")
    p.add_argument("--out", default="data_source/bars", help="one folder per asset, and market/")
    p.add_argument("--metrics", default="outputs/metrics/aggregate.json", help="metrics JSON for dvc metrics")
    args = p.parse_args(argv)
    root, raw_dir, out = repo_root(), repo_root() / args.raw, repo_root() / args.out
    cfg = load_params(args.params)
    timeframe = cfg.data.timeframe_minutes

    metrics = {}
    for symbol in cfg.data.universe:
        tables, stats = at_timeframe(read_raw(raw_dir / symbol, "download"), cfg.features, timeframe)
        write_tables(out / symbol, tables)
        metrics[symbol] = {"bars": len(tables.bars), **dataclasses.asdict(stats)}
        log.info(
            "%s: %d bars of %d min -> %d bars of %d min (%d incomplete bucket(s) dropped%s)",
            symbol,
            stats.source_bars,
            stats.source_minutes,
            len(tables.bars),
            timeframe,
            stats.buckets_dropped,
            f", first: {', '.join(stats.first_dropped)}" if stats.first_dropped else "",
        )
    market = market_bars(read_raw_market(raw_dir, cfg.features, "download"), timeframe)
    if market is not None:
        write_market(out, market)
    write_json(root / args.metrics, metrics)


if __name__ == "__main__":
    run_stage(main)
