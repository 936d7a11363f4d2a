"""Evaluate stage: every model and baseline on val (in-sample for the thresholds), test and backtest, through the
same walk-forward engine, costs and metrics.

Books: each seed's policy and the seed ensemble; the MSE proxy's seeds and ensemble; the momentum rule;
buy-and-hold and flat. Each gets its metrics, PSR, DSR (with every trial tried: seeds x threshold trials, plus
``eval.prior_trials``), stationary-bootstrap 95% intervals of its annual Sharpe and of its Sharpe minus
buy-and-hold's, and its cost sweep with the break-even cost. Writes ``<out>/report.md``, ``<out>/books.csv`` (one
row per quarter and book), the records and figures, and ``evaluate.json`` for ``dvc metrics``.

Then publishes (``registry``): each seed's policy and the ensemble as MLflow models (raw bars in, positions out),
the data files they met as run inputs, and the ensemble in the registry as ``diffquant-<experiment>@candidate``,
``@champion`` too when every gate passes (the report's "Registry" section says which failed).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from diffquant import tracking
from diffquant.data.inputs import chain_example
from diffquant.data.splits import Series
from diffquant.deploy.bundle import pipeline_bundle
from diffquant.deploy.gates import gates_markdown, gates_summary, judge_gates
from diffquant.evaluate.metric_names import SPLITS, metric_name
from diffquant.evaluate.report import Judge, books_table, render_report, score_quarter, trials_tried
from diffquant.evaluate.scoring import Scorer
from diffquant.evaluate.tuned import TunedThresholds
from diffquant.evaluate.walk_forward import DECISIONS_OF
from diffquant.io import atomic_path, sha256
from diffquant.plots import plot_walk_forward
from diffquant.tracking.registry import Judged, publish
from diffquant.train import checkpoint
from diffquant.train.layout import checkpoint_path
from stages._cli import load_params, one_asset, parser, repo_root, run_stage, write_csv, write_json

log = logging.getLogger("diffquant.stages.evaluate")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--split", default="data_source/split")
    p.add_argument("--train-dir", default="outputs/train")
    p.add_argument("--proxy-dir", default="outputs/proxy")
    p.add_argument("--thresholds", default="outputs/thresholds/thresholds.json")
    p.add_argument("--out", default="outputs/evaluate")
    p.add_argument("--metrics", default="outputs/metrics/evaluate.json")
    p.add_argument("--bars", default="data_source/bars", help="the aggregate stage's folder: the models' input example")
    p.add_argument("--raw", default="data_source/raw", help="the download stage's folder (funding)")
    args = p.parse_args(argv)
    root, out = repo_root(), repo_root() / args.out
    cfg = one_asset(load_params(args.params))

    thresholds_path = root / args.thresholds
    tuned = TunedThresholds.load(thresholds_path)
    seeds = [str(s) for s in cfg.train.seeds]
    kinds = ["policy", "proxy"] if cfg.baselines.proxy else ["policy"]
    tuned.require(thresholds_path, cfg.eval.checkpoint, kinds, seeds)
    quarters = {split: Series.load(root / args.split / f"{split}.npz") for split in SPLITS}
    expected = checkpoint.policy_spec(cfg.model, quarters["test"].feature_names, cfg.window.context)
    dirs = {"policy": root / args.train_dir, "proxy": root / args.proxy_dir}
    paths = {k: {s: checkpoint_path(dirs[k], s, cfg.eval.checkpoint) for s in seeds} for k in kinds}
    models = {"policy": {s: checkpoint.load_policy(paths["policy"][s], expected) for s in seeds}}
    if "proxy" in kinds:
        models["proxy"] = {s: checkpoint.load_forecaster(paths["proxy"][s], expected) for s in seeds}

    bars_per_day = 24 * 60 // cfg.data.timeframe_minutes  # the bootstrap's mean block: one day of bars
    bars_per_year = bars_per_day * cfg.eval.days_per_year
    trials = trials_tried(tuned, kinds, seeds, cfg.thresholds.trials, cfg.eval.prior_trials, bars_per_year)
    summary: dict[str, Any] = {"trials": trials.summary(bars_per_year), "momentum_lookback": tuned.momentum.lookback}
    runs = {
        k: {s: tracking.run_of_checkpoint(root, cfg.eval.checkpoint, sha256(paths[k][s])) for s in seeds} for k in kinds
    }
    parent = tracking.parent_of(runs["policy"][seeds[0]])
    parent.set_tags({"eval.checkpoint": cfg.eval.checkpoint})
    scorer = Scorer(cfg.sim, cfg.data.timeframe_minutes, cfg.eval.days_per_year)

    for split, series in quarters.items():
        judge = Judge(scorer, series, bars_per_year, bars_per_day, cfg.seed, list(cfg.eval.cost_multipliers))
        decisions = {k: {s: DECISIONS_OF[k](models[k][s], series) for s in seeds} for k in kinds}
        records, summary[split] = score_quarter(judge, decisions, tuned, trials)
        write_records(out, split, records)
        title = f"{cfg.experiment}: {split}, seed ensemble ({cfg.eval.checkpoint}.pt)"
        plot_quarter(records, title, out / f"{split}.png")
        for kind in kinds:  # a seed's own run: its book is the run's subject, named as the policy's
            for s in seeds:
                entry = flat_entry(summary[split][kind]["seeds"][s])
                runs[kind][s].log_metrics({metric_name(split, k): v for k, v in entry.items()})
        log_parent(parent, split, summary[split], kinds)
        policy = summary[split]["policy"]
        log.info(
            "%s: policy ensemble Sharpe %+.3f, seeds median %+.3f [%+.3f .. %+.3f] | buy-and-hold %+.3f",
            split,
            policy["ensemble"]["metrics"]["sharpe"],
            policy["distribution"]["sharpe"]["median"],
            policy["distribution"]["sharpe"]["min"],
            policy["distribution"]["sharpe"]["max"],
            summary[split]["buy_and_hold"]["sharpe"],
        )

    gates = judge_gates(summary[cfg.registry.gate_split]["policy"]["ensemble"], cfg.registry)
    summary["registry"] = gates_summary(gates, cfg.registry)
    table = books_table(summary, SPLITS, kinds)
    write_csv(out / "books.csv", table)
    report = render_report(cfg.experiment, summary, table, SPLITS, kinds, list(cfg.eval.cost_multipliers))
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(f"{report}\n{gates_markdown(cfg.experiment, gates, cfg.registry)}")
    write_json(root / args.metrics, summary)
    for name in ("report.md", "books.csv", *(f"{s}.png" for s in SPLITS)):
        parent.log_artifact(out / name, "evaluate")
    parent.log_artifact(root / args.metrics, "evaluate")
    if cfg.registry.register:
        split_dir = root / args.split
        bundle, checkpoints = pipeline_bundle(cfg, dirs["policy"], tuned, seeds)
        judged = Judged(
            bundle=bundle,
            checkpoints=checkpoints,
            seed_runs={f"seed_{s}": runs["policy"][s] for s in seeds},
            parent=parent,
            train_files={name: split_dir / f"{name}.npz" for name in ("train", "val")},
            judged_files={name: split_dir / f"{name}.npz" for name in SPLITS},
            example=chain_example(root / args.bars, root / args.raw, cfg.data.universe[0], cfg, bundle.min_bars),
        )
        publish(judged, root, cfg.experiment, gates)
    parent.finish()


def flat_entry(entry: dict[str, Any]) -> dict[str, float | None]:
    """A book's {metrics, significance, costs} as MLflow metric names."""
    costs = entry["costs"]
    return {
        **entry["metrics"],
        **entry["significance"],
        "break_even_bps": costs["break_even_bps"],
        **{f"sharpe_at_{level}_cost": v["sharpe"] for level, v in costs["levels"].items()},
    }


def log_parent(parent: tracking.Run, split: str, entry: dict[str, Any], kinds: list[str]) -> None:
    """The experiment run gets the ensemble, the seed spread and every baseline (names: ``metric_names``)."""

    def log(book: str, metrics: dict[str, float | None]) -> None:
        parent.log_metrics({metric_name(split, k, book): v for k, v in metrics.items()})

    log("policy", flat_entry(entry["policy"]["ensemble"]))
    for metric, dist in entry["policy"]["distribution"].items():
        log("policy", {f"{metric}_seed_{k}": v for k, v in dist.items()})
    if "proxy" in kinds:
        log("proxy", flat_entry(entry["proxy"]["ensemble"]))
        log("proxy", {f"sharpe_seed_{k}": v for k, v in entry["proxy"]["distribution"]["sharpe"].items()})
    log("momentum", flat_entry(entry["momentum"]))
    log("buy_and_hold", entry["buy_and_hold"])


def write_records(out: Path, split: str, records: dict[str, Any]) -> None:
    """Per-bar records: the policy ensemble as ``<split>_record.csv`` (DVC plots), everything else in ``records/``."""
    write_csv(out / f"{split}_record.csv", records["policy"]["ensemble"].record)
    write_csv(out / f"{split}_rebalances.csv", records["policy"]["ensemble"].rebalances)
    for name in ("buy_and_hold", "momentum"):
        write_csv(out / "records" / f"{split}_{name}.csv", records[name].record)
    for kind in ("policy", "proxy"):
        for name, result in records.get(kind, {}).items():
            write_csv(out / "records" / f"{split}_{kind}_{name}.csv", result.record)


def plot_quarter(records: dict[str, Any], title: str, path: Path) -> None:
    """The policy ensemble's equity, drawdown and position, with its seeds, the proxy ensemble, momentum and
    buy-and-hold on the equity panel."""
    others = {f"seed {s}": r.record for s, r in records["policy"].items() if s != "ensemble"}
    if "proxy" in records:
        others["MSE proxy ensemble"] = records["proxy"]["ensemble"].record
    others["momentum"] = records["momentum"].record
    plot_walk_forward(
        records["policy"]["ensemble"].record,
        title,
        path,
        benchmark_record=records["buy_and_hold"].record,
        label="policy ensemble",
        others=others,
    )


if __name__ == "__main__":
    run_stage(main)
