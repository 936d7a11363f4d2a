"""The policies a study would trade next: one asset's trained seeds in the newest fold, each with the hysteresis
threshold-opt tuned for it. The look-ahead check runs these against altered data."""

from __future__ import annotations

from pathlib import Path

from diffquant.config import Config, Hysteresis
from diffquant.evaluate.member import Member
from diffquant.evaluate.tuned import TunedThresholds
from diffquant.study.fold_data import read_newest_fold
from diffquant.study.fold_models import fold_groups, keyed_folders
from diffquant.train import checkpoint, layout


def newest_fold_files(cfg: Config, split: Path, train_dir: Path, threshold_dir: Path) -> tuple[Path, Path]:
    """The newest fold's seed folder of the asset's model group and its thresholds file (paths as given)."""
    data = read_newest_fold(split)
    symbol = cfg.data.universe[0]
    (group,) = [g for g in fold_groups(cfg, data) if symbol in g.symbols]
    models = keyed_folders({"policy": train_dir})(group, "policy")
    return models, threshold_dir / data.fold.name / f"{symbol}.json"


def policy_checkpoint(models: Path, seed: int, cfg: Config) -> Path:
    """Where a seed's policy at ``eval.checkpoint`` lives in a group's folder."""
    return layout.checkpoint_path(models, seed, cfg.eval.checkpoint)


def traded_hysteresis(cfg: Config, root: Path, path: Path, seeds: list[int], notes: list[str]) -> dict[int, Hysteresis]:
    """The hysteresis each seed trades: threshold-opt's (tuned on val) where it exists for this checkpoint, else the
    params' ``eval.hysteresis`` (noted). ``path`` is relative to ``root``."""
    found = TunedThresholds.load(root / path) if (root / path).exists() else None
    tuned = found.policy if found is not None and found.checkpoint == cfg.eval.checkpoint else {}
    untuned = [s for s in seeds if str(s) not in tuned]
    if untuned:
        notes.append(
            f"no thresholds for {cfg.eval.checkpoint}.pt of seed(s) {untuned} in {path}: they trade "
            "eval.hysteresis of the params"
        )
    return {s: tuned[str(s)].hysteresis if str(s) in tuned else cfg.eval.hysteresis for s in seeds}


def load_policies(
    cfg: Config, names: list[str], root: Path, models: Path, thresholds: Path, notes: list[str]
) -> list[Member]:
    """Every seed's policy that has a checkpoint, checked against the current params (a mismatch stops the run).
    ``models`` and ``thresholds`` are relative to ``root`` (the notes name them so)."""
    paths = {s: root / policy_checkpoint(models, s, cfg) for s in cfg.train.seeds}
    found = [s for s, path in paths.items() if path.exists()]
    if not found:
        notes.append(
            f"policies skipped: no {cfg.eval.checkpoint}.pt under {models} (dvc repro train); features checked only"
        )
        return []
    if len(found) < len(paths):
        notes.append(f"seed(s) {[s for s in paths if s not in found]} skipped: no {cfg.eval.checkpoint}.pt")
    expected = checkpoint.policy_spec(cfg.model, names, cfg.window.context)
    hysteresis = traded_hysteresis(cfg, root, thresholds, found, notes)
    return [Member(f"seed_{s}", checkpoint.load_policy(paths[s], expected), hysteresis[s]) for s in found]
