"""Download stage: load ``data.source`` as canonical bars and funding for every asset, and describe their quality.

One folder per asset of ``data.symbols`` (or ``data.symbol``): ``<out>/<SYMBOL>/`` with ``bars.parquet``,
``funding.parquet``, ``meta.json``, ``quality.json``, and what ``features:`` reads besides (``mark.parquet``: mark-price
bars; ``columns.parquet``: the user's columns); the market's assets under ``<out>/market/<SYMBOL>/``. Nothing is
written before every asset has loaded and been checked; each file is written atomically. The metrics JSON has a line
per asset. Run as ``python -m stages.download``.
"""

from __future__ import annotations

import logging

from diffquant.data.inputs import load_assets, write_raw, write_raw_market
from diffquant.data.quality import quality_report
from stages._cli import load_params, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.download")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--out", default="data_source/raw", help="one folder per asset, and market/")
    p.add_argument("--metrics", default="outputs/metrics/download.json", help="metrics JSON for dvc metrics")
    args = p.parse_args(argv)
    root, out = repo_root(), repo_root() / args.out
    cfg = load_params(args.params)

    assets, market = load_assets(cfg, root, cfg.data.universe)
    reports = {s: quality_report(raw.bars, raw.meta["source_minutes"]) for s, raw in assets.items()}
    metrics = {}
    for symbol, raw in assets.items():
        write_raw(out / symbol, raw)
        write_json(out / symbol / "quality.json", reports[symbol])
        s, report = reports[symbol]["summary"], reports[symbol]
        metrics[symbol] = {"n_bars": len(raw.bars), "funding_events": len(raw.funding), **s}
        log.info(
            "%s %s: %d bars of %d min, %s .. %s; %d gap(s) (%d missing bars), %d zero-volume bar(s) in %d run(s); "
            "%d funding events",
            cfg.data.source,
            symbol,
            len(raw.bars),
            raw.meta["source_minutes"],
            report["first_open_time"],
            report["last_open_time"],
            s["gaps"],
            s["missing_bars"],
            s["zero_volume_bars"],
            s["zero_volume_runs"],
            len(raw.funding),
        )
        if not raw.meta["funding_available"]:
            log.warning(
                "%s: no funding rates from data.source=%s: set sim.funding: false or give data.funding_path",
                symbol,
                cfg.data.source,
            )
    write_raw_market(out, market)
    write_json(root / args.metrics, metrics)


if __name__ == "__main__":
    run_stage(main)
