"""The backbone and loss benchmark: every backbone with the hybrid loss, the best two (on val) with every loss.

    python -m stages.zoo --size reduced            # the committed run (walkforward/zoo.yaml: its overrides)
    python -m stages.zoo --size full --workers 4   # the study the issue asks for
    python -m stages.zoo --size reduced --best tcn-series_hybrid,dlinear_hybrid   # fix phase two's backbones

Each configuration is a walk-forward study of the folds stage's kind (``diffquant.study.fold_run``) into
``outputs/zoo/<size>/runs/<configuration>/<fold>/``, cached per fold by the same key, so a rerun trains only what is
missing or stale. Writes ``outputs/zoo/<size>/zoo.{md,csv,json}`` (``diffquant.study.zoo``). Not a DVC stage: like
the ablation, a study of many configurations, each a variant of the params.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from diffquant.config import Config, from_dict, read_yaml, with_overrides
from diffquant.data.contracts import atomic_path
from diffquant.data.sources import load_universe
from diffquant.data.universe import asset_features
from diffquant.errors import ConfigError
from diffquant.evaluate.compare import to_markdown
from diffquant.folds import plan_folds
from diffquant.study.fold_data import fold_data
from diffquant.study.fold_run import run_folds
from diffquant.study.report import summarize
from diffquant.study.zoo import (
    Configuration,
    Entry,
    EpochClock,
    backbone_entries,
    best_entries,
    judge_study,
    loss_entries,
    turnover,
    val_score,
)
from stages._cli import parser, repo_root, run_stage, write_csv, write_json

log = logging.getLogger("diffquant.stages.zoo")


def run_configuration(
    entry: Entry, phase: str, cfg: Config, tables: dict[str, Any], out: Path, workers: int
) -> Configuration:
    """One configuration's folds (trained where not cached), pooled as the study stage pools them."""
    folds = [(fold_data(fold, tables, cfg), out / fold.name) for fold in plan_folds(cfg.folds, cfg.split)]
    clocks: dict[str, EpochClock] = {}

    def hooks_for(fold: str, group: str, kind: str) -> EpochClock:
        return clocks.setdefault(kind, EpochClock())

    if workers:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, workers=workers))
    results = run_folds(cfg, folds, hooks_for)
    policy = clocks.get("policy")
    if policy is not None and policy.epochs:
        write_json(out / "timing.json", {"seconds": policy.seconds, "epochs": policy.epochs})
    timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").exists() else None
    summary, tracks, _ = summarize(cfg, results)
    return Configuration(
        entry,
        phase,
        summary,
        tracks["universe"],
        val_score(results),
        turnover(results),
        timing["seconds"] / timing["epochs"] if timing else None,
    )


def describe(cfg: Config, size: str, n_configurations: int) -> str:
    """The study's size in one sentence, for the table's header."""
    plan = plan_folds(cfg.folds, cfg.split)
    t = cfg.train
    return (
        f"Size `{size}`: {n_configurations} configurations; {len(cfg.data.universe)} assets "
        f"({', '.join(cfg.data.universe)}) at {cfg.data.timeframe_minutes}-minute bars; {len(plan)} fold(s) "
        f"({cfg.folds.scheme}), tests {plan[0].describe()['test_start']} .. {plan[-1].describe()['test_end']}; "
        f"window {cfg.window.context} + {cfg.window.horizon} bars; {len(t.seeds)} seeds x {t.epochs} epochs per "
        f"configuration and fold, {cfg.thresholds.trials} threshold trials per seed and asset; training "
        f"{t.universe}, {t.threads or 'default'} thread(s)."
    )


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, training=True)
    p.add_argument("--size", default="reduced", help="a section of --sizes")
    p.add_argument("--sizes", default="walkforward/zoo.yaml", help="the sizes' overrides")
    p.add_argument("--best", default="", help="phase two's configurations, comma-separated (default: best two on val)")
    p.add_argument("--out", default="outputs/zoo")
    args = p.parse_args(argv)
    root = repo_root()
    sizes = read_yaml(root / args.sizes)
    if args.size not in sizes:
        raise ConfigError(f"{args.sizes}: no size '{args.size}'; sizes there: {', '.join(sizes)}")
    raw = with_overrides(read_yaml(root / args.params), sizes[args.size])
    base = from_dict(raw)
    out = root / args.out / args.size
    tables = {s: asset_features(asset, base)[1] for s, asset in load_universe(base.data, root).items()}

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
    pbo = study["pbo"]
    with atomic_path(out / "zoo.md") as tmp:
        tmp.write_text(
            f"# Backbone and loss benchmark\n\n{header}\n\n"
            f"Universe book (equal weight), policy seed ensemble, stitched out of sample; buy-and-hold "
            f"{study['buy_and_hold_sharpe']:+.2f} on the same {study['bars']} bars. `dsr_study` deflates by all "
            f"{study['n_trials']} trials of the study's {study['configurations']} configurations (`dsr_own`: the "
            f"configuration's own); PBO over the configurations {pbo['pbo']:.2f} ({pbo['n_blocks']} blocks). "
            f"Phase two ran on: {', '.join(e.name for e in best)} (best val score).\n\n{to_markdown(table)}"
        )
    log.info("zoo table in %s; PBO %.2f", out / "zoo.md", pbo["pbo"])


if __name__ == "__main__":
    run_stage(main)
