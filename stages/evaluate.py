"""Evaluate stage: the chosen checkpoint with the tuned thresholds on test and backtest, beside buy-and-hold and
flat through the same walk-forward engine, costs and metrics."""

from __future__ import annotations

import logging

from diffquant import tracking
from diffquant.data.contracts import read_json, sha256
from diffquant.data.splits import Series
from diffquant.errors import DataError
from diffquant.evaluate.runner import Scorer, Thresholds
from diffquant.evaluate.stats import significance
from diffquant.plots import plot_walk_forward
from diffquant.train import checkpoint
from stages._cli import load_params, parser, repo_root, run_stage, write_csv, write_json

log = logging.getLogger("diffquant.stages.evaluate")

SPLITS = ("test", "backtest")
BASELINES = {"buy_and_hold": 1.0, "flat": 0.0}


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--split", default="data_source/split")
    p.add_argument("--train-dir", default="outputs/train")
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
    thresholds = Thresholds.from_dict(tuned)
    scorer = Scorer(cfg.sim, cfg.data.timeframe_minutes, cfg.eval.days_per_year)

    summary: dict[str, dict[str, dict[str, float | None]]] = {}
    bars_per_day = 24 * 60 // cfg.data.timeframe_minutes  # the bootstrap's mean block: one day of bars
    bars_per_year = bars_per_day * cfg.eval.days_per_year
    quarters = {split: Series.load(root / args.split / f"{split}.npz") for split in SPLITS}
    path = root / args.train_dir / f"{cfg.eval.checkpoint}.pt"
    model = checkpoint.load_policy(
        path,
        checkpoint.policy_spec(cfg.model, quarters["test"].feature_names, cfg.window.context),
    )
    run = tracking.run_of_checkpoint(root, cfg.eval.checkpoint, sha256(path))
    run.set_tags({"eval.checkpoint": cfg.eval.checkpoint})
    for split, series in quarters.items():
        result, metrics = scorer.policy(model, series, thresholds)
        baselines = {name: scorer.constant(series, pos) for name, pos in BASELINES.items()}
        held = baselines["buy_and_hold"][0].record
        signif = significance(result.record["net"].to_numpy(), held["net"].to_numpy(), bars_per_year,
                              mean_block=bars_per_day, seed=cfg.seed)  # fmt: skip
        summary[split] = {"policy": metrics, "significance": signif, **{n: m for n, (_, m) in baselines.items()}}

        write_csv(out / f"{split}_record.csv", result.record)
        write_csv(out / f"{split}_rebalances.csv", result.rebalances)
        write_csv(out / f"{split}_buy_and_hold_record.csv", baselines["buy_and_hold"][0].record)
        plot_walk_forward(
            result.record,
            f"{cfg.experiment}: {split} ({cfg.eval.checkpoint}.pt)",
            out / f"{split}.png",
            benchmark_record=baselines["buy_and_hold"][0].record,
        )
        run.log_metrics(metrics, prefix=f"{split}_")
        run.log_metrics(signif, prefix=f"{split}_")
        for name, (_, m) in baselines.items():
            run.log_metrics(m, prefix=f"{split}_{name}_")
        for name in (f"{split}_record.csv", f"{split}_rebalances.csv", f"{split}.png"):
            run.log_artifact(out / name, "evaluate")
        log.info(
            "%s: Sharpe %+.3f (95%% CI %+.2f .. %+.2f), return %+.2f%%, max DD %.2f%%, %d rebalances | "
            "buy-and-hold Sharpe %+.3f, return %+.2f%%",
            split,
            metrics["sharpe"],
            signif["sharpe_ci_low"],
            signif["sharpe_ci_high"],
            metrics["total_return_pct"],
            metrics["max_drawdown_pct"],
            metrics["rebalances"],
            summary[split]["buy_and_hold"]["sharpe"],
            summary[split]["buy_and_hold"]["total_return_pct"],
        )

    write_json(root / args.metrics, summary)
    run.log_artifact(root / args.metrics, "evaluate")
    run.finish()


if __name__ == "__main__":
    run_stage(main)
