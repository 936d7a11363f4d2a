"""Threshold-opt stage: everything chosen on each fold's val window, never on its test window.

Per fold and asset: the hysteresis of each seed's policy and of each seed's MSE proxy (Optuna,
``thresholds.trials``) and the momentum rule's lookback (``baselines.momentum_lookbacks``); a portfolio: each seed's
book hysteresis and its single-asset average's choices (``diffquant.study.fold_run.choose_fold``). Folds whose
models and val data are the same (the ``single`` scheme's two) are chosen once. Writes
``<out>/<fold>/<asset or portfolio>.json`` for evaluate, and the metrics JSON (val Sharpe of the choices).
"""

from __future__ import annotations

import logging

from diffquant.evaluate.entries import BookChoices
from diffquant.evaluate.stats import distribution
from diffquant.evaluate.tuned import TunedThresholds
from diffquant.study.fold_data import read_folds
from diffquant.study.fold_models import fold_groups, keyed_folders
from diffquant.study.fold_run import Choices, choose_fold, write_choices
from stages._cli import load_params, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.threshold_opt")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--split", default="data_source/split", help="the split stage's fold plan and cuts")
    p.add_argument("--train-dir", default="outputs/train")
    p.add_argument("--proxy-dir", default="outputs/proxy")
    p.add_argument("--out", default="outputs/thresholds")
    p.add_argument("--metrics", default="outputs/metrics/thresholds.json")
    args = p.parse_args(argv)
    root, out = repo_root(), repo_root() / args.out
    cfg = load_params(args.params)
    folder_of = keyed_folders({"policy": root / args.train_dir, "proxy": root / args.proxy_dir})

    chosen: dict[tuple, Choices] = {}  # what the choices depend on: each group's models and its assets' val data
    metrics = {}
    for data in read_folds(root / args.split):
        identity = tuple((g.name, g.digest) for g in fold_groups(cfg, data))
        if identity not in chosen:
            chosen[identity] = choose_fold(cfg, data, folder_of)
        write_choices(out / data.fold.name, chosen[identity])
        metrics[data.fold.name] = {name: summary(c) for name, c in chosen[identity].items()}
        log.info("fold %s: chosen on val for %s", data.fold.name, ", ".join(chosen[identity]))
    write_json(root / args.metrics, metrics)


def summary(choice: TunedThresholds | BookChoices) -> dict:
    """The val Sharpe of each kind's choices over its seeds (and the momentum lookback)."""
    if isinstance(choice, BookChoices):
        return {"portfolio_val_sharpe": distribution([t.val_sharpe for t in choice.portfolio.values()])}
    kinds = {"policy": choice.policy, "proxy": choice.proxy}
    out = {f"{k}_val_sharpe": distribution([t.val_sharpe for t in v.values()]) for k, v in kinds.items() if v}
    return {**out, "momentum_lookback": choice.momentum.lookback}


if __name__ == "__main__":
    run_stage(main)
