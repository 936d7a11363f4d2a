"""Train stage: fit the policy on the train samples, validating by walk-forward on val; opens the MLflow run.

A killed run restarted with the same params resumes from ``last.pt`` and continues the same MLflow run, logging
only the epochs it has not logged yet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from pathlib import Path

import pandas as pd
import torch

from diffquant import tracking
from diffquant.config import flatten
from diffquant.data.contracts import sha256
from diffquant.data.features import mirror_spec
from diffquant.data.splits import Samples, Series
from diffquant.errors import ConfigError
from diffquant.evaluate.runner import Scorer, Thresholds
from diffquant.model.policy import PolicyNetwork, count_parameters
from diffquant.plots import plot_history
from diffquant.sim.losses import Objective
from diffquant.train import checkpoint
from diffquant.train.episodes import episodes_from_arrays
from diffquant.train.trainer import LAST, completed_epochs, fit, resolve_device, seed_everything
from stages._cli import load_params, parser, read_run_id, repo_root, run_stage, write_csv, write_json

log = logging.getLogger("diffquant.stages.train")

DOWNSTREAM_PARAMS = ("thresholds.", "eval.checkpoint", "optimize.")


def content_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def code_hash(root: Path) -> str:
    """The library and this stage: a checkpoint left by other code must not be resumed as if it were ours."""
    return content_hash([*sorted((root / "diffquant").rglob("*.py")), root / "stages" / "train.py"])


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--split", default="data_source/split")
    p.add_argument("--out", default="outputs/train")
    p.add_argument("--metrics", default="outputs/metrics/train.json")
    p.add_argument("--quality", default="data_source/raw/quality.json")
    p.add_argument("--run-file", default="outputs/mlflow_run.json", help="where later stages find the MLflow run")
    args = p.parse_args(argv)
    root, out = repo_root(), repo_root() / args.out
    cfg = load_params(args.params)
    tracking.check_reachable(tracking.tracking_uri(root))  # fail before hours of training, not after

    samples = Samples.load(root / args.split / "train.npz")
    val = Series.load(root / args.split / "val.npz")
    if len(samples) < cfg.train.batch_size:  # before any output: a refused config leaves nothing behind
        raise ConfigError(
            f"train.batch_size ({cfg.train.batch_size}) is larger than the {len(samples)} training samples in "
            f"{args.split}/train.npz; lower train.batch_size or widen the train split"
        )
    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.seed)
    model = PolicyNetwork(cfg.model, len(samples.feature_names), cfg.window.context).to(device)
    objective = Objective(cfg.loss, cfg.sim.smooth_abs_eps)
    scorer = Scorer(cfg.sim, cfg.data.timeframe_minutes, cfg.eval.days_per_year)
    thresholds = Thresholds.from_eval(cfg.eval)
    mirror = tuple(torch.as_tensor(a) for a in mirror_spec(samples.feature_names)) if cfg.train.mirror else None
    data_id = content_hash([root / args.split / "train.npz", root / args.split / "val.npz"])
    spec = {
        "policy": checkpoint.policy_spec(cfg.model, samples.feature_names, cfg.window.context),
        "train": dataclasses.asdict(cfg.train), "loss": dataclasses.asdict(cfg.loss),
        "sim": dataclasses.asdict(cfg.sim), "seed": cfg.seed, "experiment": cfg.experiment, "data": data_id,
        "code": code_hash(root),
        "validation": {**thresholds.to_dict(), "days_per_year": cfg.eval.days_per_year},
    }  # fmt: skip

    done = completed_epochs(out, spec)
    run_file = root / args.run_file
    if done and run_file.exists():
        run = tracking.open_run(root, read_run_id(run_file))
        # A kill between saving last.pt and logging its epoch leaves that epoch unlogged: log what is missing.
        logged = run.logged_steps("train_loss")
        run.log_history([r for r in checkpoint.load(out / LAST)["history"] if r["epoch"] not in logged])
        log.info("resuming MLflow run %s after epoch %d", run.run_id, done)
    else:
        run = tracking.start_run(root, cfg.experiment, {"data_hash": data_id, "seed": str(cfg.seed)})
        # Params of the stages after train (thresholds, which checkpoint) may change without retraining: they are
        # set as tags by those stages, since an MLflow param can not change once logged.
        run.log_params({k: v for k, v in flatten(cfg.to_dict()).items() if not k.startswith(DOWNSTREAM_PARAMS)})
        if done:  # resuming without the run that began it: carry the finished epochs over
            run.log_history(checkpoint.load(out / LAST)["history"])
        run.log_params(
            {
                "objective": repr(objective),
                "device": str(device),
            }
        )
        write_json(run_file, {"run_id": run.run_id, "experiment": cfg.experiment})

    def validate(m: PolicyNetwork) -> dict[str, float]:
        return scorer.policy(m, val, thresholds)[1]

    clock = [time.perf_counter()]

    def on_epoch(record: dict[str, float]) -> None:
        now = time.perf_counter()
        run.log_history([{**record, "epoch_seconds": now - clock[0]}])
        clock[0] = now

    t0 = time.perf_counter()
    episodes = episodes_from_arrays(samples.features, samples.close, samples.funding, cfg.window.context)
    try:
        result = fit(model, episodes, validate, objective, cfg.sim, cfg.train, cfg.window.horizon, cfg.seed, out,
                     spec, mirror, on_epoch=on_epoch)  # fmt: skip
    except BaseException as exc:  # a restart resumes this run; until then the store says why it stopped
        run.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    seconds = time.perf_counter() - t0

    history = result.history
    checked = [r for r in history if "val_sharpe" in r]
    columns = ["epoch", "train_loss", "val_sharpe", "val_total_return_pct", "val_flat_share", "val_turnover",
               "val_rebalances"]  # fmt: skip
    write_csv(out / "val_history.csv", pd.DataFrame(checked)[columns])
    write_json(out / "history.json", history)
    plot_history(history, out / "history.png")
    metrics = {
        "best_epoch": result.best_epoch or 0,
        "best_val_sharpe": result.best_val_sharpe if result.best_val_sharpe is not None else checked[-1]["val_sharpe"],
        "final_val_sharpe": checked[-1]["val_sharpe"],
        "final_train_loss": history[-1]["train_loss"],
        "epochs": len(history),
        "n_parameters": count_parameters(model),
        "n_train_samples": len(samples),
    }
    write_json(root / args.metrics, metrics)  # deterministic: timings go to MLflow only
    run.log_metrics({k: v for k, v in metrics.items() if k != "epochs"}, step=len(history))
    run.log_metrics({"train_seconds": seconds, "resumed_after_epoch": result.resumed_from}, step=len(history))
    for path in (out / "history.png", out / "history.json", out / "val_history.csv", root / args.params):
        run.log_artifact(path, "train")
    for name in ("best", "final"):
        run.log_artifact(result.checkpoints[name], "checkpoints")
    run.set_tags({tracking.checkpoint_tag(n): sha256(result.checkpoints[n]) for n in ("best", "final")})
    if (root / args.quality).exists():
        run.log_artifact(root / args.quality, "data")
    log.info(
        "trained %d epochs in %.1f s; best epoch %s (val Sharpe %s); run %s",
        len(history),
        seconds,
        result.best_epoch,
        result.best_val_sharpe,
        run.run_id,
    )


if __name__ == "__main__":
    run_stage(main)
