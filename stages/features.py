"""Features stage: every asset's bars + funding (+ what ``features:`` reads besides) -> its causal feature table
(layout in docs/design_notes.md; the families in docs/features.md).

Reads the aggregate stage's ``<bars>/<SYMBOL>/`` (and ``<bars>/market/``) and the download stage's funding and meta
in ``<raw>/<SYMBOL>/``; writes ``<out>/<SYMBOL>.parquet`` per asset and the metrics JSON with a line per asset, each
atomically. Run as ``python -m stages.features``.
"""

from __future__ import annotations

import logging

import numpy as np

from diffquant.data.features import feature_columns, features_from_inputs
from diffquant.data.inputs import read_funding, stage_inputs
from diffquant.errors import ConfigError
from diffquant.io import read_json, write_parquet
from stages._cli import load_params, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.features")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--bars", default="data_source/bars", help="the aggregate stage's folder")
    p.add_argument("--raw", default="data_source/raw", help="the download stage's folder (funding, meta)")
    p.add_argument("--out", default="data_source/features", help="one feature table per asset")
    p.add_argument("--metrics", default="outputs/metrics/features.json", help="metrics JSON for dvc metrics")
    args = p.parse_args(argv)
    root, raw_dir = repo_root(), repo_root() / args.raw
    cfg = load_params(args.params)

    metrics = {}
    for symbol in cfg.data.universe:
        meta = read_json(raw_dir / symbol / "meta.json", "download")
        if not meta.get("funding_available", False) and cfg.sim.funding:
            raise ConfigError(
                f"sim.funding is true but data.source={meta.get('source')!r} provides no funding rates for {symbol} "
                f"({raw_dir / symbol / 'meta.json'}): provide data.funding_path or set sim.funding=false"
            )
        inputs = stage_inputs(root / args.bars, raw_dir, symbol, cfg)
        table = features_from_inputs(inputs, cfg.features, cfg.data.timeframe_minutes)
        write_parquet(table, root / args.out / f"{symbol}.parquet")
        metrics[symbol] = {
            "rows": len(table),
            "features": feature_columns(table),
            "first_bar": table["open_time"].iloc[0].isoformat(),
            "last_bar": table["open_time"].iloc[-1].isoformat(),
            "funding_events": len(read_funding(raw_dir / symbol / "funding.parquet", "download")),
            "bars_with_funding": int(np.count_nonzero(table["funding_rate"].to_numpy())),
            "zero_volume_bars": int((inputs.bars["volume"] == 0).sum()),
        }
        log.info(
            "%s: %d feature rows (%s .. %s), channels %s; %d bars with a funding payment",
            symbol,
            len(table),
            metrics[symbol]["first_bar"],
            metrics[symbol]["last_bar"],
            ", ".join(metrics[symbol]["features"]),
            metrics[symbol]["bars_with_funding"],
        )
    write_json(root / args.metrics, metrics)


if __name__ == "__main__":
    run_stage(main)
