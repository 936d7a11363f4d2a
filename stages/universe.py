"""Universe stage: every asset of ``data.symbols`` from ``data.source`` to its bars, features and quality report.

The walk-forward study's data stage: for each asset, what download, aggregate and features do for one, by the same
library calls. Writes ``<out>/<SYMBOL>/{bars,funding,features}.parquet`` (and ``mark``, ``columns`` when the premium
or user-column features read them), ``meta.json`` and ``quality.json``; the market family's assets' bars as
``<out>/market/<SYMBOL>.parquet``; and one metrics JSON with a line per asset. Run as ``python -m stages.universe``.
"""

from __future__ import annotations

import logging

from diffquant.data.inputs import write_market, write_tables
from diffquant.data.universe import universe_features
from diffquant.io import write_parquet
from stages._cli import load_params, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.universe")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--out", default="data_source/universe", help="one folder per asset")
    p.add_argument("--metrics", default="outputs/metrics/universe.json", help="metrics JSON for dvc metrics")
    args = p.parse_args(argv)
    root, out = repo_root(), repo_root() / args.out
    cfg = load_params(args.params)

    metrics = {}
    raws, assets, market = universe_features(cfg, root)
    for symbol, asset in assets.items():
        table, report, folder = asset.features, asset.report, out / symbol
        bars = asset.tables.bars
        write_tables(folder, asset.tables)
        write_parquet(raws[symbol].funding, folder / "funding.parquet")
        write_parquet(table, folder / "features.parquet")
        write_json(folder / "meta.json", raws[symbol].meta)
        write_json(folder / "quality.json", report)
        s = report["summary"]
        metrics[symbol] = {
            "bars": len(bars),
            "first_bar": table["open_time"].iloc[0].isoformat(),
            "last_bar": table["open_time"].iloc[-1].isoformat(),
            "gaps": s["gaps"],
            "zero_volume_bars": s["zero_volume_bars"],
            "funding_events": len(raws[symbol].funding),
        }
        log.info(
            "%s: %d bars of %d min, %s .. %s, %d gap(s)",
            symbol,
            len(bars),
            cfg.data.timeframe_minutes,
            metrics[symbol]["first_bar"],
            metrics[symbol]["last_bar"],
            s["gaps"],
        )
    if market is not None:
        write_market(out, market)
    write_json(root / args.metrics, metrics)


if __name__ == "__main__":
    run_stage(main)
