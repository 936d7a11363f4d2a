"""Download stage: load ``data.source`` as canonical bars and funding, and describe their quality.

Writes ``<out>/bars.parquet``, ``funding.parquet``, ``meta.json``, ``quality.json`` and the metrics JSON, only after
everything has loaded and been checked, each file atomically; and what ``features:`` reads besides: ``mark.parquet``
(mark-price bars), ``columns.parquet`` (the user's columns), ``market/<SYMBOL>/`` (the market's assets). Run as
``python -m stages.download``.
"""

from __future__ import annotations

import logging

from diffquant.data.inputs import load_assets, write_raw, write_raw_market
from diffquant.data.quality import quality_report
from stages._cli import load_params, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.download")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--out", default="data_source/raw", help="folder for bars, funding, meta and quality")
    p.add_argument("--metrics", default="outputs/metrics/download.json", help="metrics JSON for dvc metrics")
    args = p.parse_args(argv)
    root = repo_root()
    params = load_params(args.params)
    cfg = params.data

    assets, market = load_assets(params, root, [cfg.symbol])
    raw = assets[cfg.symbol]
    report = quality_report(raw.bars, raw.meta["source_minutes"])
    metrics = {"n_bars": len(raw.bars), "funding_events": len(raw.funding), **report["summary"]}

    out = root / args.out
    write_raw(out, raw)
    write_raw_market(out, market)
    write_json(out / "quality.json", report)
    write_json(root / args.metrics, metrics)

    s = report["summary"]
    log.info(
        "%s %s: %d bars of %d min, %s .. %s; %d gap(s) (%d missing bars), %d zero-volume bar(s) in %d run(s); "
        "%d funding events; report in %s",
        cfg.source,
        cfg.symbol,
        len(raw.bars),
        raw.meta["source_minutes"],
        report["first_open_time"],
        report["last_open_time"],
        s["gaps"],
        s["missing_bars"],
        s["zero_volume_bars"],
        s["zero_volume_runs"],
        len(raw.funding),
        out / "quality.json",
    )
    if not raw.meta["funding_available"]:
        log.warning(
            "no funding rates from data.source=%s: set sim.funding: false or give data.funding_path", cfg.source
        )


if __name__ == "__main__":
    run_stage(main)
