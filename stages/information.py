"""Information content (not a DVC stage): the rank IC of every feature channel with the next hours' returns, pooled
over the universe's assets, with bootstrap intervals, before any training (``diffquant.evaluate.information``).

Builds each asset's features as the data stages do (``data.symbols``, ``features:``) and writes
``<out>/information.json`` and ``information.md`` (one row per channel). ``--set key=value`` changes a params key for
this run only, as ``dvc exp run -S`` would, e.g.
``python -m stages.information --set 'data.symbols=[universe]' --set data.timeframe_minutes=60``.
"""

from __future__ import annotations

import logging

import yaml

from diffquant.config import from_dict, read_yaml, with_overrides
from diffquant.data.universe import universe_features
from diffquant.errors import ConfigError
from diffquant.evaluate.information import Panel, ic_markdown, ic_records, rank_ic_table
from stages._cli import parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.information")


def overrides(items: list[str]) -> dict[str, object]:
    """``key=value`` pairs, the values read as YAML (``[a, b]``, numbers, quoted dates)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: write it as key=value, e.g. data.timeframe_minutes=60")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--set", action="append", default=[], help="key=value, a params key for this run (repeatable)")
    p.add_argument("--hours", default="8,24", help="forward-return horizons in hours, comma-separated")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--block-hours", type=float, default=168.0, help="mean bootstrap block (hours)")
    p.add_argument("--out", default="outputs/information", help="folder for information.json and .md")
    args = p.parse_args(argv)
    root = repo_root()
    cfg = from_dict(with_overrides(read_yaml(root / args.params), overrides(args.set)))
    tf = cfg.data.timeframe_minutes

    tables = {s: asset.features for s, asset in universe_features(cfg, root)[1].items()}
    hours = [float(h) for h in args.hours.split(",")]
    table = rank_ic_table(
        Panel.of(tables), hours, tf, cfg.sim.execution_lag_bars, n_boot=args.boot, block_bars=args.block_hours * 60 / tf
    )
    out = root / args.out
    first, last = (
        min(t["open_time"].iloc[0] for t in tables.values()),
        max(t["open_time"].iloc[-1] for t in tables.values()),
    )
    header = f"{len(tables)} assets ({', '.join(tables)}), {tf}-minute bars, {first:%Y-%m-%d} .. {last:%Y-%m-%d}\n\n"
    write_json(out / "information.json", {"symbols": list(tables), "overrides": args.set, "rows": ic_records(table)})
    (out / "information.md").write_text(header + ic_markdown(table))
    print(header + ic_markdown(table))
    log.info("rank ICs of %d channels in %s", table["channel"].nunique(), out)


if __name__ == "__main__":
    run_stage(main)
