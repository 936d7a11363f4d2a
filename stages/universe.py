"""Universe stage: every asset of ``data.symbols`` from ``data.source`` to its bars, features and quality report.

The walk-forward study's data stage: for each asset, what download, aggregate and features do for one, by the same
library calls. Writes ``<out>/<SYMBOL>/{bars,funding,features}.parquet``, ``meta.json`` and ``quality.json``, and
one metrics JSON with a line per asset. Run as ``python -m stages.universe``.
"""

from __future__ import annotations

import logging

from diffquant.data.sources import load_universe
from diffquant.data.universe import asset_features
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
    for symbol, raw in load_universe(cfg.data, root).items():
        bars, table, report = asset_features(raw, cfg)
        folder = out / symbol
        write_parquet(bars, folder / "bars.parquet")
        write_parquet(raw.funding, folder / "funding.parquet")
        write_parquet(table, folder / "features.parquet")
        write_json(folder / "meta.json", raw.meta)
        write_json(folder / "quality.json", report)
        s = report["summary"]
        metrics[symbol] = {
            "bars": len(bars),
            "first_bar": table["open_time"].iloc[0].isoformat(),
            "last_bar": table["open_time"].iloc[-1].isoformat(),
            "gaps": s["gaps"],
            "zero_volume_bars": s["zero_volume_bars"],
            "funding_events": len(raw.funding),
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
    write_json(root / args.metrics, metrics)


if __name__ == "__main__":
    run_stage(main)
