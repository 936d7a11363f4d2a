"""Optimize: Optuna search over training hyper-parameters on a shared storage, its trials trained by the grid runner.

Not part of ``dvc repro``. This command creates the study (or finds it), opens or reopens the study's MLflow run,
then runs rounds of ``--workers`` trials through the grid runner (one after another here, ``--workers`` local
processes, or a Ray cluster with ``--grid-address``) until the study holds ``--trials``, and writes the study
summary. Another command with the same ``--storage`` and ``MLFLOW_TRACKING_URI`` (on this machine or another)
adds its trials to the same study; create the study once first (``--create-only``) when several start together on a
fresh database.
"""

from __future__ import annotations

import argparse
import logging

from diffquant import search
from diffquant.errors import DiffQuantError
from diffquant.search.session import SearchRequest, prepare_search, search_session
from stages._cli import add_grid_address, load_params, one_asset, parser, repo_root, run_stage

log = logging.getLogger("diffquant.stages.optimize")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--split", default="data_source/split", help="the split stage's folds: the newest one's train, val")
    p.add_argument("--out", default="outputs/optimize", help="summary.json goes here")
    p.add_argument("--trials", type=_positive, help="trials the study aims at (default optimize.trials)")
    p.add_argument("--workers", type=_positive, help="trials trained at once (default optimize.workers)")
    add_grid_address(p)
    p.add_argument("--storage", help="journal file path or SQLAlchemy URL (default optimize.storage)")
    p.add_argument("--study-name", help="default optimize.study_name, else the experiment name")
    p.add_argument("--epochs", type=_positive, help="training epochs per trial (default optimize.epochs)")
    p.add_argument("--write-params", action="store_true", help="write the best trial's params into --params")
    p.add_argument("--create-only", action="store_true", help="create the study and its MLflow run, then exit")
    args = p.parse_args(argv)
    root = repo_root()
    cfg = one_asset(load_params(args.params, grid_address=args.grid_address))
    o = cfg.optimize
    req = SearchRequest(
        storage=args.storage or o.storage,
        name=args.study_name or o.study_name or cfg.experiment,
        trials=args.trials or o.trials,
        workers=args.workers or o.workers,
        epochs=args.epochs or o.epochs or cfg.train.epochs,
        split=root / args.split,
        summary=root / args.out / "summary.json",
    )
    if args.create_only:
        parent = prepare_search(cfg, root, req)[2]
        log.info("study '%s' ready in %s; MLflow run %s", req.name, req.storage, parent.run_id)
        return
    s = search_session(cfg, root, req)
    log.info(
        "study '%s': %d trials (%d complete, %d pruned, %d failed), %d run here in %.1f s; best val Sharpe %s "
        "(trial %s)",
        *(req.name, s["n_trials"], s["n_complete"], s["n_pruned"], s["n_failed"], s["ran_here"]),
        *(s["wall_seconds_here"], s["best_value"], s["best_trial"]),
    )
    if args.write_params:
        if not s["best_params"]:
            raise DiffQuantError("--write-params: the study has no complete trial yet; nothing written")
        # the trials tried are part of the result: the deflated Sharpe ratio in evaluate counts them
        search.write_params(root / args.params, {**s["best_params"], "eval.prior_trials": s["n_trials"]})
        log.info(
            "wrote the best params of trial %d and eval.prior_trials = %d into %s",
            s["best_trial"],
            s["n_trials"],
            args.params,
        )


if __name__ == "__main__":
    run_stage(main)
