"""Features stage: bars + funding (+ what ``features:`` reads besides) -> the causal feature table (layout in
docs/design_notes.md; the families in docs/features.md).

Reads ``data_source/bars/bars.parquet`` and the download stage's folder (funding, meta, and the mark-price bars, user
columns and market assets when the families read them, aggregated here like the bars); writes ``--out`` and the
metrics JSON, each atomically. Run as ``python -m stages.features``.
"""

from __future__ import annotations

import logging

import numpy as np

from diffquant.data.contracts import validate_bars
from diffquant.data.features import feature_columns, features_from_inputs
from diffquant.data.inputs import chain_inputs
from diffquant.errors import ConfigError
from diffquant.io import read_json, read_parquet, write_parquet
from stages._cli import load_params, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.features")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--bars", default="data_source/bars/bars.parquet", help="the aggregate stage's bars")
    p.add_argument("--raw", default="data_source/raw", help="the download stage's folder (funding, meta)")
    p.add_argument("--out", default="data_source/features/features.parquet", help="feature table")
    p.add_argument("--metrics", default="outputs/metrics/features.json", help="metrics JSON for dvc metrics")
    args = p.parse_args(argv)
    root = repo_root()
    cfg = load_params(args.params)

    raw, bars_path = root / args.raw, root / args.bars
    meta = read_json(raw / "meta.json", "download")
    bars = validate_bars(read_parquet(bars_path, "aggregate"), str(bars_path))
    if not meta.get("funding_available", False) and cfg.sim.funding:
        raise ConfigError(
            f"sim.funding is true but data.source={meta.get('source')!r} provides no funding rates "
            f"({raw / 'meta.json'}): provide data.funding_path or set sim.funding=false"
        )
    table = features_from_inputs(chain_inputs(bars, raw, cfg), cfg.features, cfg.data.timeframe_minutes)
    write_parquet(table, root / args.out)
    paid = table["funding_rate"].to_numpy()
    funding = read_parquet(raw / "funding.parquet", "download")
    metrics = {
        "rows": len(table),
        "features": feature_columns(table),
        "first_bar": table["open_time"].iloc[0].isoformat(),
        "last_bar": table["open_time"].iloc[-1].isoformat(),
        "funding_events": len(funding),
        "bars_with_funding": int(np.count_nonzero(paid)),
        "zero_volume_bars": int((bars["volume"] == 0).sum()),
    }
    write_json(root / args.metrics, metrics)
    log.info(
        "%d feature rows (%s .. %s), channels %s; %d of %d funding events fall in a bar",
        len(table),
        metrics["first_bar"],
        metrics["last_bar"],
        ", ".join(metrics["features"]),
        metrics["bars_with_funding"],
        len(funding),
    )


if __name__ == "__main__":
    run_stage(main)
