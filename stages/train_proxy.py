"""Train-proxy stage: the MSE baseline, one forecaster per seed of every single-asset model group of every fold.

The same backbone, dense layers, optimiser, schedule, epochs and seeds as the policy, fitted by least squares to the
next-horizon return of every train bar; best.pt is the epoch with the lowest val MSE (no Sharpe anywhere in its
training or selection). threshold-opt then tunes its hysteresis on val exactly as the policy's, and evaluate trades it
through the same walk-forward engine. Folders as the train stage's (``<out>/<group>/<digest>/seed_<s>/``). MLflow: a
parent run "<experiment>/mse_proxy" and a child per fold x group x seed. Nothing to train without
``baselines.proxy`` or for a portfolio (its baselines are rules and the single-asset policies).
"""

from __future__ import annotations

import logging

from diffquant import tracking
from diffquant.config import flatten
from diffquant.evaluate.stats import distribution
from diffquant.study.fold_data import read_folds
from diffquant.study.fold_models import keyed_folders, train_groups
from diffquant.study.kinds import study_kind
from stages._cli import load_params, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.train_proxy")

SHARED_PARAMS = ("model.", "train.", "window.", "sim.execution_lag_bars")  # what the proxy shares with the policy


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, training=True)
    p.add_argument("--split", default="data_source/split", help="the split stage's fold plan and cuts")
    p.add_argument("--out", default="outputs/proxy")
    p.add_argument("--metrics", default="outputs/metrics/proxy.json")
    args = p.parse_args(argv)
    root, out = repo_root(), repo_root() / args.out
    cfg = load_params(args.params, args.workers, args.grid_address)
    out.mkdir(parents=True, exist_ok=True)
    if "proxy" not in study_kind(cfg).trains():
        write_json(root / args.metrics, {"trained": False})
        log.info("no MSE proxy to train (baselines.proxy: %s, model.kind: %s)", cfg.baselines.proxy, cfg.model.kind)
        return
    tracking.check_reachable(tracking.tracking_uri(root))
    folds = read_folds(root / args.split)

    params = {k: v for k, v in flatten(cfg.to_dict()).items() if k.startswith(SHARED_PARAMS)}
    runs = tracking.StudyRuns(root, f"{cfg.experiment}/mse_proxy", params, {}, role="proxy")
    outcomes = train_groups(cfg, folds, keyed_folders({"proxy": out}), runs.hooks, only=["proxy"])
    groups: dict[str, dict[str, dict]] = {}
    for unit, outcome in sorted(outcomes.items()):
        groups.setdefault(unit.group, {})[str(unit.seed)] = outcome.summary()
        log.info("%s: best epoch %s, val IC %+.4f", unit.name, outcome.result.best_epoch, outcome.summary()["val_ic"])
    metrics = {
        "trained": True,
        **{
            g: {"seeds": seeds, "val_ic": distribution([s["val_ic"] for s in seeds.values()])}
            for g, seeds in groups.items()
        },
    }
    write_json(root / args.metrics, metrics)
    runs.parent.finish()


if __name__ == "__main__":
    run_stage(main)
