"""Train stage: fit one policy per seed in ``train.seeds`` on the train samples, validating by walk-forward on val.

Opens the experiment's MLflow parent run and one child run per seed; each seed's checkpoints go to
``<out>/seed_<seed>/``. A killed run restarted with the same params resumes the unfinished seed from its
``last.pt`` and continues the same MLflow runs, logging only the epochs they have not logged yet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from diffquant import tracking
from diffquant.config import Config, flatten
from diffquant.data.contracts import read_json, sha256
from diffquant.data.features import mirror_spec
from diffquant.data.splits import Samples, Series
from diffquant.errors import ConfigError
from diffquant.evaluate.runner import Scorer, Thresholds
from diffquant.evaluate.stats import distribution
from diffquant.model.policy import PolicyNetwork, count_parameters
from diffquant.plots import plot_history
from diffquant.sim.losses import Objective
from diffquant.train import checkpoint
from diffquant.train.episodes import EpisodeBatch, episodes_from_arrays
from diffquant.train.trainer import LAST, TrainResult, completed_epochs, fit, resolve_device, seed_everything
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
    p.add_argument("--run-file", default="outputs/mlflow_run.json", help="where later stages find the MLflow runs")
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
    data_id = content_hash([root / args.split / "train.npz", root / args.split / "val.npz"])
    spec = {
        "policy": checkpoint.policy_spec(cfg.model, samples.feature_names, cfg.window.context),
        "train": dataclasses.asdict(cfg.train), "loss": dataclasses.asdict(cfg.loss),
        "sim": dataclasses.asdict(cfg.sim), "experiment": cfg.experiment, "data": data_id, "code": code_hash(root),
        "validation": {**dataclasses.asdict(Thresholds.from_eval(cfg.eval)), "days_per_year": cfg.eval.days_per_year},
    }  # fmt: skip
    drop_stale(out, cfg.train.seeds)
    runs = open_runs(root, root / args.run_file, cfg, spec, out)
    episodes = episodes_from_arrays(samples.features, samples.close, samples.funding, cfg.window.context)
    seeds: dict[str, dict] = {}
    histories: dict[str, list[dict]] = {}
    for seed in cfg.train.seeds:
        result, seconds = train_seed(cfg, seed, spec, samples.feature_names, episodes, val, device, out, runs)
        histories[f"seed {seed}"] = result.history
        checked = [r for r in result.history if "val_sharpe" in r]
        seeds[str(seed)] = {
            "best_epoch": result.best_epoch or 0,
            "best_val_sharpe": result.best_score if result.best_score is not None else checked[-1]["val_sharpe"],
            "final_val_sharpe": checked[-1]["val_sharpe"],
            "final_train_loss": result.history[-1]["train_loss"],
        }
        log.info("seed %d: %d epochs in %.1f s; best epoch %s (val Sharpe %s)", seed, len(result.history), seconds,
                 result.best_epoch, result.best_score)  # fmt: skip

    plot_history(histories, out / "history.png")
    metrics = {
        "seeds": seeds,
        "best_val_sharpe": distribution([s["best_val_sharpe"] for s in seeds.values()]),
        "epochs": cfg.train.epochs,
        "n_parameters": count_parameters(PolicyNetwork(cfg.model, len(samples.feature_names), cfg.window.context)),
        "n_train_samples": len(samples),
    }
    write_json(root / args.metrics, metrics)  # deterministic: timings go to MLflow only
    parent = runs.parent
    parent.log_metrics({f"best_val_sharpe_{k}": v for k, v in metrics["best_val_sharpe"].items()})
    parent.log_metrics({"n_parameters": metrics["n_parameters"], "n_train_samples": len(samples)})
    for path in (out / "history.png", root / args.params):
        parent.log_artifact(path, "train")
    if (root / args.quality).exists():
        parent.log_artifact(root / args.quality, "data")


def drop_stale(out: Path, seeds: list[int]) -> None:
    """Remove what ``out`` (a persistent DVC output) holds beyond this run's seeds: the folders of seeds no longer in
    ``train.seeds`` and the files of the one-seed layout (``out/last.pt`` ...). DVC's cache keeps earlier versions."""
    if not out.is_dir():
        return
    keep = {f"seed_{s}" for s in seeds} | {"history.png"}
    for path in sorted(out.iterdir()):
        stale_seed = path.is_dir() and path.name.startswith("seed_") and path.name not in keep
        stale_file = path.is_file() and path.name in {LAST, "best.pt", "final.pt", "history.json", "val_history.csv"}
        if stale_seed or stale_file:
            log.info("removing %s: not an output of train.seeds = %s", path, seeds)
            shutil.rmtree(path) if path.is_dir() else path.unlink()


@dataclasses.dataclass
class Runs:
    """The experiment's parent run and one child run per seed, as recorded in the run file."""

    root: Path
    path: Path
    parent: tracking.Run
    experiment: str
    seeds: dict[str, str]

    def child(self, seed: int) -> tuple[tracking.Run, bool]:
        """This seed's run, and whether it existed already (a resumed seed)."""
        if str(seed) in self.seeds:
            return tracking.open_run(self.root, self.seeds[str(seed)]), True
        run = tracking.start_child(self.parent, f"seed {seed}", {"seed": str(seed), "role": "policy_seed"})
        self.seeds[str(seed)] = run.run_id
        self.save()
        return run, False

    def save(self) -> None:
        write_json(self.path, {"run_id": self.parent.run_id, "experiment": self.experiment, "seeds": self.seeds})


def open_runs(root: Path, run_file: Path, cfg: Config, spec: dict, out: Path) -> Runs:
    """Continue the runs of an interrupted train stage with the same spec, else open a new parent run.

    A resumed seed is one whose ``last.pt`` was written under this spec; with none, everything starts over.
    """
    resumed = any(completed_epochs(out / f"seed_{s}", {**spec, "seed": s}) for s in cfg.train.seeds)
    if resumed and run_file.exists():
        recorded = read_json(run_file, "train")
        if recorded.get("seeds") is not None:
            parent = tracking.open_run(root, read_run_id(run_file))
            log.info("resuming MLflow run %s", parent.run_id)
            return Runs(root, run_file, parent, cfg.experiment, dict(recorded["seeds"]))
    tags = {"data_hash": spec["data"], "seeds": ",".join(map(str, cfg.train.seeds)), "role": "policy"}
    parent = tracking.start_run(root, cfg.experiment, tags)
    # Params of the stages after train (thresholds, which checkpoint) may change without retraining: they are
    # set as tags by those stages, since an MLflow param can not change once logged.
    parent.log_params({k: v for k, v in flatten(cfg.to_dict()).items() if not k.startswith(DOWNSTREAM_PARAMS)})
    runs = Runs(root, run_file, parent, cfg.experiment, {})
    runs.save()
    return runs


def train_seed(cfg: Config, seed: int, spec: dict, feature_names: list[str], episodes: EpisodeBatch, val: Series,
               device: torch.device, out: Path, runs: Runs) -> tuple[TrainResult, float]:  # fmt: skip
    """One seed's model into ``out/seed_<seed>/``, logged to its child run; resumes from its ``last.pt``."""
    seed_out, spec = out / f"seed_{seed}", {**spec, "seed": seed}
    seed_everything(seed)
    model = PolicyNetwork(cfg.model, len(feature_names), cfg.window.context).to(device)
    objective = Objective(cfg.loss, cfg.sim.smooth_abs_eps)
    scorer = Scorer(cfg.sim, cfg.data.timeframe_minutes, cfg.eval.days_per_year)
    thresholds = Thresholds.from_eval(cfg.eval)
    mirror = tuple(torch.as_tensor(a) for a in mirror_spec(feature_names)) if cfg.train.mirror else None

    run, existed = runs.child(seed)
    done = completed_epochs(seed_out, spec)
    if existed and done:  # a kill between saving last.pt and logging its epoch leaves that epoch unlogged
        logged = run.logged_steps("train_loss")
        run.log_history([r for r in checkpoint.load(seed_out / LAST)["history"] if r["epoch"] not in logged])
    elif done:  # resuming without the run that began it: carry the finished epochs over
        run.log_history(checkpoint.load(seed_out / LAST)["history"])
    if not existed:
        run.log_params({"seed": seed, "objective": repr(objective), "device": str(device)})

    clock = [time.perf_counter()]

    def on_epoch(record: dict[str, float]) -> None:
        now = time.perf_counter()
        run.log_history([{**record, "epoch_seconds": now - clock[0]}])
        clock[0] = now

    t0 = time.perf_counter()
    try:
        result = fit(model, episodes, lambda m: scorer.policy(m, val, thresholds)[1], objective, cfg.sim, cfg.train,
                     cfg.window.horizon, seed, seed_out, spec, mirror, on_epoch=on_epoch)  # fmt: skip
    except BaseException as exc:  # a restart resumes this run; until then the store says why it stopped
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        for r in (run, runs.parent):
            r.finish(status)
        raise
    seconds = time.perf_counter() - t0

    checked = [r for r in result.history if "val_sharpe" in r]
    columns = ["epoch", "train_loss", "val_sharpe", "val_total_return_pct", "val_flat_share", "val_turnover",
               "val_rebalances"]  # fmt: skip
    write_csv(seed_out / "val_history.csv", pd.DataFrame(checked)[columns])
    write_json(seed_out / "history.json", result.history)
    best = result.best_score if result.best_score is not None else checked[-1]["val_sharpe"]
    run.log_metrics({"best_epoch": result.best_epoch or 0, "best_val_sharpe": best}, step=len(result.history))
    run.log_metrics({"train_seconds": seconds, "resumed_after_epoch": result.resumed_from}, step=len(result.history))
    for path in (seed_out / "history.json", seed_out / "val_history.csv"):
        run.log_artifact(path, "train")
    for name in ("best", "final"):
        run.log_artifact(result.checkpoints[name], "checkpoints")
    run.set_tags({tracking.checkpoint_tag(n): sha256(result.checkpoints[n]) for n in ("best", "final")})
    run.finish()
    return result, seconds


if __name__ == "__main__":
    run_stage(main)
