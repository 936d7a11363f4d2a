"""Threshold-opt stage: tune the hysteresis thresholds on val (Optuna) and write them for evaluate to apply."""

from __future__ import annotations

import logging

from diffquant import tracking
from diffquant.data.contracts import sha256
from diffquant.data.splits import Series
from diffquant.evaluate.runner import Scorer, Thresholds
from diffquant.evaluate.thresholds import search
from diffquant.evaluate.walk_forward import policy_decisions
from diffquant.train import checkpoint
from stages._cli import load_params, parser, repo_root, run_stage, write_csv, write_json

log = logging.getLogger("diffquant.stages.threshold_opt")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--val", default="data_source/split/val.npz")
    p.add_argument("--train-dir", default="outputs/train")
    p.add_argument("--out", default="outputs/thresholds")
    p.add_argument("--metrics", default="outputs/metrics/thresholds.json")
    args = p.parse_args(argv)
    root, out = repo_root(), repo_root() / args.out
    cfg = load_params(args.params)

    val = Series.load(root / args.val)
    path = root / args.train_dir / f"{cfg.eval.checkpoint}.pt"
    model = checkpoint.load_policy(
        path,
        checkpoint.policy_spec(cfg.model, val.feature_names, cfg.window.context),
    )
    scorer = Scorer(cfg.sim, cfg.data.timeframe_minutes, cfg.eval.days_per_year)
    result = search(
        val,
        policy_decisions(model, val),
        scorer,
        Thresholds.from_eval(cfg.eval),
        cfg.thresholds.trials,
        cfg.thresholds.objective,
        cfg.train.select_min_rebalances,
        cfg.seed,
    )

    write_csv(out / "trials.csv", result.trials)
    write_json(
        out / "thresholds.json", {**result.best.to_dict(), "source": result.source, "checkpoint": cfg.eval.checkpoint}
    )
    summary = {f"val_{k}": result.metrics[k] for k in ("sharpe", "total_return_pct", "rebalances", "flat_share")}
    write_json(
        root / args.metrics,
        {
            **result.best.to_dict(),
            **summary,
            "trials": len(result.trials),
            "feasible_trials": int(result.trials["feasible"].sum()),
        },
    )

    run = tracking.run_of_checkpoint(root, cfg.eval.checkpoint, sha256(path))
    run.set_tags({"eval.checkpoint": cfg.eval.checkpoint, "thresholds.trials": str(cfg.thresholds.trials),
                  "thresholds.objective": cfg.thresholds.objective})  # fmt: skip
    run.log_metrics({**result.best.to_dict(), "trials": len(result.trials)}, prefix="threshold_")
    run.log_metrics(result.metrics, prefix="tuned_val_")
    run.log_artifact(out / "trials.csv", "thresholds")
    run.log_artifact(out / "thresholds.json", "thresholds")
    log.info(
        "thresholds (%s): %s; val %s %.3f, %d rebalances",
        result.source,
        result.best.to_dict(),
        cfg.thresholds.objective,
        result.metrics[cfg.thresholds.objective],
        result.metrics["rebalances"],
    )


if __name__ == "__main__":
    run_stage(main)
