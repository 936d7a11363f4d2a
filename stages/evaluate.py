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

import numpy as np
import pandas as pd

from diffquant import tracking
from diffquant.data.contracts import atomic_path, read_json, sha256
from diffquant.data.splits import Series
from diffquant.errors import DataError
from diffquant.evaluate.baselines import momentum_decisions
from diffquant.evaluate.hysteresis import apply_hysteresis
from diffquant.evaluate.report import Judge, books_table, group, render_report
from diffquant.evaluate.runner import Scorer, Thresholds
from diffquant.evaluate.stats import null_max_sharpe
from diffquant.evaluate.walk_forward import Decisions, forecast_decisions, policy_decisions
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
    n_trials = {k: len(seeds) * (cfg.thresholds.trials + 1) + cfg.eval.prior_trials for k in kinds}
    null = {k: null_max_sharpe(np.concatenate([tuned[k][s]["trial_sharpes"] for s in seeds]), n_trials[k],
                               bars_per_year) for k in kinds}  # fmt: skip
    momentum_trials = len(tuned["momentum"]["candidate_sharpes"])
    momentum_null = null_max_sharpe(np.array(tuned["momentum"]["candidate_sharpes"]), momentum_trials, bars_per_year)
    summary: dict[str, Any] = {
        "trials": {**{f"{k}_n": n_trials[k] for k in kinds}, **{f"{k}_null_sharpe_annual": null[k] *
                   np.sqrt(bars_per_year) for k in kinds}, "momentum_n": momentum_trials},
        "momentum_lookback": tuned["momentum"]["lookback"],
    }  # fmt: skip
    runs = {k: {s: tracking.run_of_checkpoint(root, cfg.eval.checkpoint, sha256(paths[k][s])) for s in seeds}
            for k in kinds}  # fmt: skip
    parent = tracking.parent_of(runs["policy"][seeds[0]])
    parent.set_tags({"eval.checkpoint": cfg.eval.checkpoint})

    for split, series in quarters.items():
        scorer = Scorer(cfg.sim, cfg.data.timeframe_minutes, cfg.eval.days_per_year)
        hold, hold_metrics = scorer.constant(series, 1.0)
        judge = Judge(scorer, series, hold.record["net"].to_numpy(), bars_per_year, bars_per_day, cfg.seed,
                      list(cfg.eval.cost_multipliers))  # fmt: skip
        entry: dict[str, Any] = {}
        records = {}
        for kind in kinds:
            decisions: dict[str, Decisions] = {
                s: (policy_decisions if kind == "policy" else forecast_decisions)(models[kind][s], series)
                for s in seeds
            }
            executed = {s: apply_hysteresis(decisions[s].raw, **Thresholds.from_dict(tuned[kind][s]).to_dict())
                        for s in seeds}  # fmt: skip
            records[kind], entry[kind] = group(judge, executed, decisions, null[kind])
            for s in seeds:
                runs[kind][s].log_metrics(flat_entry(entry[kind]["seeds"][s]), prefix=MLFLOW_PREFIX[split])
        records["momentum"], entry["momentum"] = judge.book(
            momentum_decisions(series, tuned["momentum"]["lookback"]), None, momentum_null)
        entry["buy_and_hold"], entry["flat"] = hold_metrics, scorer.constant(series, 0.0)[1]
        summary[split] = entry
        write_records(out, split, records, hold.record)
        others = {f"seed {s}": records["policy"][s].record for s in seeds}
        if "proxy" in kinds:
            others["MSE proxy ensemble"] = records["proxy"]["ensemble"].record
        others["momentum"] = records["momentum"].record
        plot_walk_forward(records["policy"]["ensemble"].record, f"{cfg.experiment}: {split}, seed ensemble "
                          f"({cfg.eval.checkpoint}.pt)", out / f"{split}.png", benchmark_record=hold.record,
                          label="policy ensemble", others=others)  # fmt: skip
        log_parent(parent, split, entry, kinds)
        log.info("%s: policy ensemble Sharpe %+.3f, seeds median %+.3f [%+.3f .. %+.3f] | buy-and-hold %+.3f", split,
                 entry["policy"]["ensemble"]["metrics"]["sharpe"], entry["policy"]["distribution"]["sharpe"]["median"],
                 entry["policy"]["distribution"]["sharpe"]["min"], entry["policy"]["distribution"]["sharpe"]["max"],
                 hold_metrics["sharpe"])  # fmt: skip

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


def write_records(out: Path, split: str, records: dict[str, Any], hold: pd.DataFrame) -> None:
    """Per-bar records: the policy ensemble as ``<split>_record.csv`` (DVC plots), everything else in ``records/``."""
    write_csv(out / f"{split}_record.csv", records["policy"]["ensemble"].record)
    write_csv(out / f"{split}_rebalances.csv", records["policy"]["ensemble"].rebalances)
    write_csv(out / "records" / f"{split}_buy_and_hold.csv", hold)
    write_csv(out / "records" / f"{split}_momentum.csv", records["momentum"].record)
    for kind in ("policy", "proxy"):
        for name, result in records.get(kind, {}).items():
            write_csv(out / "records" / f"{split}_{kind}_{name}.csv", result.record)


if __name__ == "__main__":
    run_stage(main)
