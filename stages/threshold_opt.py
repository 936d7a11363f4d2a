"""Threshold-opt stage: everything tuned on val, never on test or backtest.

- The hysteresis thresholds of each seed's policy and of each seed's MSE proxy (Optuna, ``thresholds.trials``).
- The lookback of the momentum rule (``baselines.momentum_lookbacks``).

Writes ``<out>/thresholds.json`` for evaluate to apply, and each search's trials to ``<out>/trials/``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from diffquant import tracking
from diffquant.config import Config
from diffquant.data.splits import Series
from diffquant.evaluate.baselines import choose_momentum
from diffquant.evaluate.scoring import Scorer
from diffquant.evaluate.stats import distribution
from diffquant.evaluate.threshold_search import SearchResult, search_config
from diffquant.evaluate.tuned import TunedModel, TunedThresholds
from diffquant.evaluate.walk_forward import Decisions, forecast_decisions, policy_decisions
from diffquant.io import sha256
from diffquant.train import checkpoint
from diffquant.train.layout import checkpoint_path
from stages._cli import load_params, one_asset, parser, repo_root, run_stage, write_csv, write_json

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
    cfg = one_asset(load_params(args.params))
    val = Series.load(root / args.val)
    scorer = Scorer(cfg.sim, cfg.data.timeframe_minutes, cfg.eval.days_per_year)
    expected = checkpoint.policy_spec(cfg.model, val.feature_names, cfg.window.context)

    def tune(kind: str, seed: int, path: Path, decisions: Decisions) -> TunedModel:
        result = search_config(cfg, val, decisions, scorer)
        write_csv(out / "trials" / f"{kind}_seed_{seed}.csv", result.trials)
        run = tracking.run_of_checkpoint(root, cfg.eval.checkpoint, sha256(path))
        log_search(run, cfg, result, out / "trials" / f"{kind}_seed_{seed}.csv")
        log.info(
            "%s seed %d thresholds (%s): val Sharpe %+.3f, %d rebalances",
            kind,
            seed,
            result.source,
            result.metrics["sharpe"],
            result.metrics["rebalances"],
        )
        return result.tuned()

    tuned: dict[str, dict[str, TunedModel]] = {"policy": {}, "proxy": {}}
    for seed in cfg.train.seeds:
        path = checkpoint_path(root / args.train_dir, seed, cfg.eval.checkpoint)
        model = checkpoint.load_policy(path, expected)
        tuned["policy"][str(seed)] = tune("policy", seed, path, policy_decisions(model, val))
        if cfg.baselines.proxy:
            path = checkpoint_path(root / args.proxy_dir, seed, cfg.eval.checkpoint)
            forecaster = checkpoint.load_forecaster(path, expected)
            tuned["proxy"][str(seed)] = tune("proxy", seed, path, forecast_decisions(forecaster, val))
    momentum, table = choose_momentum(val, cfg.baselines.momentum_lookbacks, scorer)
    write_csv(out / "momentum.csv", table)
    record = TunedThresholds(cfg.eval.checkpoint, tuned["policy"], tuned["proxy"], momentum)
    write_json(out / "thresholds.json", record.to_dict())

    summary = {
        kind: {
            "val_sharpe": distribution([t.val_sharpe for t in tuned[kind].values()]),
            "trials_per_seed": cfg.thresholds.trials + 1,
        }
        for kind in ("policy", "proxy")
        if tuned[kind]
    }
    write_json(root / args.metrics, {**summary, "momentum": dataclasses.asdict(momentum)})
    log.info("momentum: lookback %d bars (val Sharpe %+.3f)", momentum.lookback, momentum.val_sharpe)


def log_search(run: tracking.Run, cfg: Config, result: SearchResult, trials_csv: Path) -> None:
    """A search's settings, result and trials into the run of the checkpoint it tuned."""
    run.set_tags(
        {
            "eval.checkpoint": cfg.eval.checkpoint,
            "thresholds.trials": str(cfg.thresholds.trials),
            "thresholds.objective": cfg.thresholds.objective,
        }
    )
    run.log_metrics({**dataclasses.asdict(result.best), "trials": len(result.trials)}, prefix="threshold_")
    run.log_metrics(result.metrics, prefix="tuned_val_")
    run.log_artifact(trials_csv, "thresholds")


if __name__ == "__main__":
    run_stage(main)
