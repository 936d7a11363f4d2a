"""Train-proxy stage: the MSE baseline, one forecaster per seed in ``train.seeds`` (``diffquant.train.proxy``).

The same backbone, dense layers, optimiser, schedule, epochs and seeds as the policy, fitted by least squares to the
next-horizon return of every train bar; best.pt is the epoch with the lowest val MSE (no Sharpe anywhere in its
training or selection). threshold-opt then tunes its hysteresis on val exactly as the policy's, and evaluate trades it
through the same walk-forward engine. Its MLflow runs: a parent "<experiment>/mse_proxy" and a child per seed.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from diffquant import tracking
from diffquant.config import flatten
from diffquant.data.contracts import sha256
from diffquant.data.splits import Series
from diffquant.evaluate.stats import distribution
from diffquant.model.forecaster import Forecaster
from diffquant.train import checkpoint
from diffquant.train.proxy import ForecastTask, calibrate, forecast_quality, forecast_set, horizon_log_returns
from diffquant.train.trainer import fit_task, resolve_device, seed_everything
from stages._cli import load_params, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.train_proxy")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--split", default="data_source/split")
    p.add_argument("--out", default="outputs/proxy")
    p.add_argument("--metrics", default="outputs/metrics/proxy.json")
    args = p.parse_args(argv)
    root, out = repo_root(), repo_root() / args.out
    cfg = load_params(args.params)
    if not cfg.baselines.proxy:
        out.mkdir(parents=True, exist_ok=True)
        write_json(root / args.metrics, {"trained": False})
        log.info("baselines.proxy is false: no proxy trained")
        return
    tracking.check_reachable(tracking.tracking_uri(root))

    train = Series.load(root / args.split / "train_series.npz")
    val = Series.load(root / args.split / "val.npz")
    ctx, horizon, lag = cfg.window.context, cfg.window.horizon, cfg.sim.execution_lag_bars
    scale = float(np.std(horizon_log_returns(train, ctx, horizon, lag)[1]))
    device = resolve_device(cfg.train.device)
    train_set, val_set = (forecast_set(s, ctx, horizon, lag, scale).to(device) for s in (train, val))
    spec = {
        "policy": checkpoint.policy_spec(cfg.model, train.feature_names, ctx),
        "train": dataclasses.asdict(cfg.train), "horizon": horizon, "lag": lag, "target_scale": scale,
        "batch_windows": cfg.baselines.proxy_batch_windows,
    }  # fmt: skip

    parent = tracking.start_run(root, f"{cfg.experiment}/mse_proxy", {"role": "proxy"})
    shared = ("model.", "train.", "window.", "sim.execution_lag_bars")
    parent.log_params({k: v for k, v in flatten(cfg.to_dict()).items() if k.startswith(shared)})
    seeds = {}
    for seed in cfg.train.seeds:
        seed_everything(seed)
        model = Forecaster(cfg.model, len(train.feature_names), ctx).to(device)
        task = ForecastTask(train_set, cfg.baselines.proxy_batch_windows)
        with tracking.child_run(parent, f"mse_proxy seed {seed}", {"seed": str(seed), "role": "proxy_seed"}) as run:
            result = fit_task(model, task, lambda m: forecast_quality(m, val_set), lambda v: -v["mse"], cfg.train,
                              seed, out / f"seed_{seed}", {**spec, "seed": seed})  # fmt: skip
            run.log_history(result.history)  # all epochs, also those of a resumed run's earlier life
            quality = {}
            for name in ("best", "final"):  # the position scale belongs to the weights each file holds
                state = checkpoint.load(result.checkpoints[name])
                model.load_state_dict(state["model_state"])
                quality[name] = {"forecast_scale": calibrate(model, train_set),
                                 **{f"val_{k}": v for k, v in forecast_quality(model, val_set).items()}}  # fmt: skip
                checkpoint.save(result.checkpoints[name], {**state, "model_state": model.state_dict()})
            seeds[str(seed)] = {"best_epoch": result.best_epoch or 0, **quality["best"]}
            run.log_metrics(seeds[str(seed)], step=cfg.train.epochs)
            run.set_tags({tracking.checkpoint_tag(n): sha256(result.checkpoints[n]) for n in ("best", "final")})
            for name in ("best", "final"):
                run.log_artifact(result.checkpoints[name], "checkpoints")
        log.info("proxy seed %d: best epoch %s, val MSE %.4f, IC %+.4f", seed, result.best_epoch,
                 seeds[str(seed)]["val_mse"], seeds[str(seed)]["val_ic"])  # fmt: skip
    metrics = {"trained": True, "target_scale": scale, "seeds": seeds,
               "val_ic": distribution([s["val_ic"] for s in seeds.values()])}  # fmt: skip
    write_json(root / args.metrics, metrics)
    parent.log_metrics({f"val_ic_{k}": v for k, v in metrics["val_ic"].items()})
    parent.finish()


if __name__ == "__main__":
    run_stage(main)
