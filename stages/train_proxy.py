"""Train-proxy stage: the MSE baseline, one forecaster per seed in ``train.seeds`` (``diffquant.train.proxy``).

The same backbone, dense layers, optimiser, schedule, epochs and seeds as the policy, fitted by least squares to the
next-horizon return of every train bar; best.pt is the epoch with the lowest val MSE (no Sharpe anywhere in its
training or selection). threshold-opt then tunes its hysteresis on val exactly as the policy's, and evaluate trades it
through the same walk-forward engine. Its MLflow runs: a parent "<experiment>/mse_proxy" and a child per seed.
"""

from __future__ import annotations

import logging

from diffquant import tracking
from diffquant.config import flatten
from diffquant.data.splits import Series
from diffquant.evaluate.stats import distribution
from diffquant.train.proxy_training import target_scale, train_proxies
from stages._cli import load_params, one_asset, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.train_proxy")

SHARED_PARAMS = ("model.", "train.", "window.", "sim.execution_lag_bars")  # what the proxy shares with the policy


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, training=True)
    p.add_argument("--split", default="data_source/split")
    p.add_argument("--out", default="outputs/proxy")
    p.add_argument("--metrics", default="outputs/metrics/proxy.json")
    args = p.parse_args(argv)
    root, out = repo_root(), repo_root() / args.out
    cfg = one_asset(load_params(args.params, args.workers, args.grid_address))
    if not cfg.baselines.proxy:
        out.mkdir(parents=True, exist_ok=True)
        write_json(root / args.metrics, {"trained": False})
        log.info("baselines.proxy is false: no proxy trained")
        return
    tracking.check_reachable(tracking.tracking_uri(root))

    train = Series.load(root / args.split / "train_series.npz")
    val = Series.load(root / args.split / "val.npz")
    params = {k: v for k, v in flatten(cfg.to_dict()).items() if k.startswith(SHARED_PARAMS)}
    runs = tracking.SeedRuns(root, f"{cfg.experiment}/mse_proxy", "proxy", params, {})
    outcomes = train_proxies(cfg, [train], [val], out, runs)
    for seed, o in outcomes.items():
        log.info(
            "proxy seed %d: best epoch %s, val MSE %.4f, IC %+.4f",
            seed,
            o.result.best_epoch,
            o.quality["val_mse"],
            o.quality["val_ic"],
        )

    seeds = {str(s): o.summary() for s, o in outcomes.items()}
    metrics = {
        "trained": True,
        "target_scale": target_scale(cfg, [train]),
        "seeds": seeds,
        "val_ic": distribution([s["val_ic"] for s in seeds.values()]),
    }
    write_json(root / args.metrics, metrics)
    runs.parent.log_metrics({f"val_ic_{k}": v for k, v in metrics["val_ic"].items()})
    runs.parent.finish()


if __name__ == "__main__":
    run_stage(main)
