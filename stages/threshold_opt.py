"""Threshold-opt stage: everything tuned on val, never on test or backtest.

- The hysteresis thresholds of each seed's policy and of each seed's MSE proxy (Optuna, ``thresholds.trials``).
- The lookback of the momentum rule (``baselines.momentum_lookbacks``).

Writes ``<out>/thresholds.json`` for evaluate to apply, and each search's trials to ``<out>/trials/``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from diffquant import tracking
from diffquant.config import Config
from diffquant.data.contracts import sha256
from diffquant.data.splits import Series
from diffquant.evaluate.baselines import choose_momentum
from diffquant.evaluate.runner import Scorer, Thresholds
from diffquant.evaluate.stats import distribution
from diffquant.evaluate.thresholds import SearchResult, search
from diffquant.evaluate.walk_forward import Decisions, forecast_decisions, policy_decisions
from diffquant.train import checkpoint
from stages._cli import load_params, parser, repo_root, run_stage, write_csv, write_json

log = logging.getLogger("diffquant.stages.threshold_opt")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--val", default="data_source/split/val.npz")
    p.add_argument("--train-dir", default="outputs/train")
    p.add_argument("--proxy-dir", default="outputs/proxy")
    p.add_argument("--out", default="outputs/thresholds")
    p.add_argument("--metrics", default="outputs/metrics/thresholds.json")
    args = p.parse_args(argv)
    root, out = repo_root(), repo_root() / args.out
    cfg = load_params(args.params)
    val = Series.load(root / args.val)
    scorer = Scorer(cfg.sim, cfg.data.timeframe_minutes, cfg.eval.days_per_year)
    expected = checkpoint.policy_spec(cfg.model, val.feature_names, cfg.window.context)

    def tune(kind: str, seed: int, path: Path, decisions: Decisions) -> dict[str, Any]:
        result = search(val, decisions, scorer, Thresholds.from_eval(cfg.eval), cfg.thresholds.trials,
                        cfg.thresholds.objective, cfg.train.select_min_rebalances, cfg.seed)  # fmt: skip
        write_csv(out / "trials" / f"{kind}_seed_{seed}.csv", result.trials)
        run = tracking.run_of_checkpoint(root, cfg.eval.checkpoint, sha256(path))
        log_search(run, cfg, result, out / "trials" / f"{kind}_seed_{seed}.csv")
        log.info("%s seed %d thresholds (%s): val Sharpe %+.3f, %d rebalances", kind, seed, result.source,
                 result.metrics["sharpe"], result.metrics["rebalances"])  # fmt: skip
        return {**result.best.to_dict(), "source": result.source, "val_sharpe": result.metrics["sharpe"],
                "val_total_return_pct": result.metrics["total_return_pct"],
                "val_rebalances": result.metrics["rebalances"], "trials": len(result.trials),
                "trial_sharpes": [float(v) for v in result.trials["sharpe"]]}  # fmt: skip

    tuned: dict[str, Any] = {"checkpoint": cfg.eval.checkpoint, "policy": {}, "proxy": {}}
    for seed in cfg.train.seeds:
        path = root / args.train_dir / f"seed_{seed}" / f"{cfg.eval.checkpoint}.pt"
        model = checkpoint.load_policy(path, expected)
        tuned["policy"][str(seed)] = tune("policy", seed, path, policy_decisions(model, val))
        if cfg.baselines.proxy:
            path = root / args.proxy_dir / f"seed_{seed}" / f"{cfg.eval.checkpoint}.pt"
            forecaster = checkpoint.load_forecaster(path, expected)
            tuned["proxy"][str(seed)] = tune("proxy", seed, path, forecast_decisions(forecaster, val))
    lookback, table = choose_momentum(val, cfg.baselines.momentum_lookbacks, scorer)
    write_csv(out / "momentum.csv", table)
    tuned["momentum"] = {"lookback": lookback, "val_sharpe": float(table.set_index("lookback").loc[lookback, "sharpe"]),
                         "candidate_sharpes": [float(v) for v in table["sharpe"]]}  # fmt: skip
    write_json(out / "thresholds.json", tuned)

    summary = {kind: {"val_sharpe": distribution([t["val_sharpe"] for t in tuned[kind].values()]),
                      "trials_per_seed": cfg.thresholds.trials + 1}
               for kind in ("policy", "proxy") if tuned[kind]}  # fmt: skip
    write_json(root / args.metrics, {**summary, "momentum": tuned["momentum"]})
    log.info("momentum: lookback %d bars (val Sharpe %+.3f)", lookback, tuned["momentum"]["val_sharpe"])


def log_search(run: tracking.Run, cfg: Config, result: SearchResult, trials_csv: Path) -> None:
    """A search's settings, result and trials into the run of the checkpoint it tuned."""
    run.set_tags({"eval.checkpoint": cfg.eval.checkpoint, "thresholds.trials": str(cfg.thresholds.trials),
                  "thresholds.objective": cfg.thresholds.objective})  # fmt: skip
    run.log_metrics({**result.best.to_dict(), "trials": len(result.trials)}, prefix="threshold_")
    run.log_metrics(result.metrics, prefix="tuned_val_")
    run.log_artifact(trials_csv, "thresholds")


if __name__ == "__main__":
    run_stage(main)
