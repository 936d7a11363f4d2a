"""The backbone and loss benchmark: every backbone with the hybrid loss, the best two (on val) with every loss.

    python -m stages.zoo --size reduced            # the committed run (stages/zoo.yaml: its overrides)
    python -m stages.zoo --size full --workers 4   # the study the issue asks for
    python -m stages.zoo --size reduced --best tcn-series_hybrid,dlinear_hybrid   # fix phase two's backbones

Each configuration is a walk-forward study of the chain's kind (``diffquant.study.fold_run``) into
``outputs/zoo/<size>/runs/<configuration>/<fold>/``, cached per fold by the same key, so a rerun trains only what is
missing or stale. Writes ``outputs/zoo/<size>/zoo.{md,csv,json}`` (``diffquant.study.zoo``). Not a DVC stage: like
the ablation, a study of many configurations, each a variant of the params.
"""

from __future__ import annotations

import logging

from diffquant.config import from_dict, read_yaml, with_overrides
from diffquant.data.universe import universe_features
from diffquant.errors import ConfigError
from diffquant.io import atomic_path
from diffquant.study.zoo import (
    Configuration,
    Entry,
    backbone_entries,
    best_entries,
    describe,
    judge_study,
    loss_entries,
    run_configuration,
    zoo_markdown,
)
from stages._cli import parser, repo_root, run_stage, write_csv, write_json

log = logging.getLogger("diffquant.stages.zoo")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, training=True)
    p.add_argument("--size", default="reduced", help="a section of --sizes")
    p.add_argument("--sizes", default="stages/zoo.yaml", help="the sizes' overrides")
    p.add_argument("--best", default="", help="phase two's configurations, comma-separated (default: best two on val)")
    p.add_argument("--out", default="outputs/zoo")
    args = p.parse_args(argv)
    root = repo_root()
    sizes = read_yaml(root / args.sizes)
    if args.size not in sizes:
        raise ConfigError(f"{args.sizes}: no size '{args.size}'; sizes there: {', '.join(sizes)}")
    raw = with_overrides(read_yaml(root / args.params), sizes[args.size])
    if args.grid_address is not None:  # where the units train: never part of a result
        raw = with_overrides(raw, {"train.grid_address": args.grid_address})
    base = from_dict(raw)
    out = root / args.out / args.size
    tables = {s: asset.features for s, asset in universe_features(base, root)[1].items()}

    def run(entry: Entry, phase: str) -> Configuration:
        cfg = from_dict(with_overrides(raw, {**entry.overrides(), "experiment": f"zoo_{entry.name}"}))
        log.info("%s (%s)", entry.name, phase)
        done = run_configuration(entry, phase, cfg, tables, out / "runs" / entry.name, args.workers)
        u = done.summary["tracks"]["universe"]["policy"]
        log.info("%s: universe book Sharpe %+.2f, val score %+.2f", entry.name, u["sharpe"], done.val_score)
        return done

    configurations = [run(e, "backbones") for e in backbone_entries()]
    by_name = {c.entry.name: c.entry for c in configurations}
    if args.best:
        unknown = [n for n in args.best.split(",") if n not in by_name]
        if unknown:
            raise ConfigError(f"--best: no phase-one configuration {', '.join(unknown)}; they are {', '.join(by_name)}")
        best = [by_name[n] for n in args.best.split(",")]
    else:
        best = best_entries(configurations)
    configurations += [run(e, "losses") for e in loss_entries(best)]

    table, study = judge_study(configurations, base)
    header = describe(base, args.size, len(configurations))
    write_csv(out / "zoo.csv", table)
    write_json(out / "zoo.json", {"size": header, **study, "best": [e.name for e in best]})
    with atomic_path(out / "zoo.md") as tmp:
        tmp.write_text(zoo_markdown(header, study, best, table))
    log.info("zoo table in %s; PBO %.2f", out / "zoo.md", study["pbo"]["pbo"])


if __name__ == "__main__":
    run_stage(main)
