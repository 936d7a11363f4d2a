"""Evaluate stage: every model and baseline on val (in-sample for the thresholds), test and backtest, through the
same walk-forward engine, costs and metrics.

Books: each seed's policy and the seed ensemble; the MSE proxy's seeds and ensemble; the momentum rule;
buy-and-hold and flat. Each gets its metrics, PSR, DSR (with every trial tried: seeds x threshold trials, plus
``eval.prior_trials``), stationary-bootstrap 95% intervals of its annual Sharpe and of its Sharpe minus
buy-and-hold's, and its cost sweep with the break-even cost. Writes ``<out>/report.md``, ``<out>/books.csv`` (one
row per quarter and book), the records and figures, and ``evaluate.json`` for ``dvc metrics``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from diffquant import tracking
from diffquant.data.contracts import atomic_path, read_json, sha256
from diffquant.data.splits import Series
from diffquant.errors import DataError
from diffquant.evaluate.report import Judge, books_table, render_report, score_quarter, trials_tried
from diffquant.evaluate.runner import Scorer
from diffquant.evaluate.walk_forward import forecast_decisions, policy_decisions
from diffquant.plots import plot_walk_forward
from diffquant.train import checkpoint
from stages._cli import load_params, parser, repo_root, run_stage, write_csv, write_json

log = logging.getLogger("diffquant.stages.evaluate")

SPLITS = ("val", "test", "backtest")
# metric names in MLflow; a seed's run already has the per-epoch curve "val_sharpe" of its training
MLFLOW_PREFIX = {"val": "tuned_val_", "test": "test_", "backtest": "backtest_"}


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--split", default="data_source/split")
    p.add_argument("--train-dir", default="outputs/train")
    p.add_argument("--proxy-dir", default="outputs/proxy")
    p.add_argument("--thresholds", default="outputs/thresholds/thresholds.json")
    p.add_argument("--out", default="outputs/evaluate")
    p.add_argument("--metrics", default="outputs/metrics/evaluate.json")
    args = p.parse_args(argv)
    root, out = repo_root(), repo_root() / args.out
    cfg = load_params(args.params)

    tuned = read_json(root / args.thresholds, "threshold-opt")
    if tuned.get("checkpoint") != cfg.eval.checkpoint:
        raise DataError(
            f"{args.thresholds} was tuned for {tuned.get('checkpoint')}.pt but eval.checkpoint is "
            f"{cfg.eval.checkpoint!r}; re-run the threshold-opt stage (dvc repro threshold-opt)"
        )
    seeds = [str(s) for s in cfg.train.seeds]
    kinds = ["policy", "proxy"] if cfg.baselines.proxy else ["policy"]
    missing = [f"{k} seed {s}" for k in kinds for s in seeds if s not in tuned.get(k, {})]
    if missing:
        raise DataError(f"{args.thresholds} has no thresholds for {', '.join(missing)}; re-run threshold-opt")
    quarters = {split: Series.load(root / args.split / f"{split}.npz") for split in SPLITS}
    expected = checkpoint.policy_spec(cfg.model, quarters["test"].feature_names, cfg.window.context)
    paths = {k: {s: root / (args.train_dir if k == "policy" else args.proxy_dir) / f"seed_{s}" /
                 f"{cfg.eval.checkpoint}.pt" for s in seeds} for k in kinds}  # fmt: skip
    models = {"policy": {s: checkpoint.load_policy(paths["policy"][s], expected) for s in seeds}}
    if "proxy" in kinds:
        models["proxy"] = {s: checkpoint.load_forecaster(paths["proxy"][s], expected) for s in seeds}

    bars_per_day = 24 * 60 // cfg.data.timeframe_minutes  # the bootstrap's mean block: one day of bars
    bars_per_year = bars_per_day * cfg.eval.days_per_year
    trials = trials_tried(tuned, kinds, seeds, cfg.thresholds.trials, cfg.eval.prior_trials, bars_per_year)
    summary: dict[str, Any] = {"trials": trials.summary(bars_per_year),
                               "momentum_lookback": tuned["momentum"]["lookback"]}  # fmt: skip
    runs = {k: {s: tracking.run_of_checkpoint(root, cfg.eval.checkpoint, sha256(paths[k][s])) for s in seeds}
            for k in kinds}  # fmt: skip
    parent = tracking.parent_of(runs["policy"][seeds[0]])
    parent.set_tags({"eval.checkpoint": cfg.eval.checkpoint})
    scorer = Scorer(cfg.sim, cfg.data.timeframe_minutes, cfg.eval.days_per_year)

    for split, series in quarters.items():
        judge = Judge(scorer, series, bars_per_year, bars_per_day, cfg.seed, list(cfg.eval.cost_multipliers))
        decide = {"policy": policy_decisions, "proxy": forecast_decisions}
        decisions = {k: {s: decide[k](models[k][s], series) for s in seeds} for k in kinds}
        records, summary[split] = score_quarter(judge, decisions, tuned, tuned["momentum"]["lookback"], trials)
        write_records(out, split, records)
        title = f"{cfg.experiment}: {split}, seed ensemble ({cfg.eval.checkpoint}.pt)"
        plot_quarter(records, title, out / f"{split}.png")
        for kind in kinds:
            for s in seeds:
                runs[kind][s].log_metrics(flat_entry(summary[split][kind]["seeds"][s]), prefix=MLFLOW_PREFIX[split])
        log_parent(parent, split, summary[split], kinds)
        policy = summary[split]["policy"]
        log.info("%s: policy ensemble Sharpe %+.3f, seeds median %+.3f [%+.3f .. %+.3f] | buy-and-hold %+.3f", split,
                 policy["ensemble"]["metrics"]["sharpe"], policy["distribution"]["sharpe"]["median"],
                 policy["distribution"]["sharpe"]["min"], policy["distribution"]["sharpe"]["max"],
                 summary[split]["buy_and_hold"]["sharpe"])  # fmt: skip

    table = books_table(summary, SPLITS, kinds)
    write_csv(out / "books.csv", table)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render_report(cfg.experiment, summary, table, SPLITS, kinds, list(cfg.eval.cost_multipliers)))
    write_json(root / args.metrics, summary)
    for name in ("report.md", "books.csv", *(f"{s}.png" for s in SPLITS)):
        parent.log_artifact(out / name, "evaluate")
    parent.log_artifact(root / args.metrics, "evaluate")
    parent.finish()


def flat_entry(entry: dict[str, Any]) -> dict[str, float | None]:
    """A book's {metrics, significance, costs} as MLflow metric names."""
    costs = entry["costs"]
    return {**entry["metrics"], **entry["significance"], "break_even_bps": costs["break_even_bps"],
            **{f"sharpe_at_{level}_cost": v["sharpe"] for level, v in costs["levels"].items()}}  # fmt: skip


def log_parent(parent: tracking.Run, split: str, entry: dict[str, Any], kinds: list[str]) -> None:
    """The experiment run gets the ensemble as ``<split>_*``, the seed spread and every baseline."""
    policy, split = entry["policy"], MLFLOW_PREFIX[split].removesuffix("_")
    parent.log_metrics(flat_entry(policy["ensemble"]), prefix=f"{split}_")
    for metric, dist in policy["distribution"].items():
        parent.log_metrics({f"{metric}_seed_{k}": v for k, v in dist.items()}, prefix=f"{split}_")
    if "proxy" in kinds:
        parent.log_metrics(flat_entry(entry["proxy"]["ensemble"]), prefix=f"{split}_proxy_")
        parent.log_metrics({f"sharpe_seed_{k}": v for k, v in entry["proxy"]["distribution"]["sharpe"].items()},
                           prefix=f"{split}_proxy_")  # fmt: skip
    parent.log_metrics(flat_entry(entry["momentum"]), prefix=f"{split}_momentum_")
    parent.log_metrics(entry["buy_and_hold"], prefix=f"{split}_buy_and_hold_")


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
    plot_walk_forward(records["policy"]["ensemble"].record, title, path,
                      benchmark_record=records["buy_and_hold"].record, label="policy ensemble", others=others)


if __name__ == "__main__":
    run_stage(main)
