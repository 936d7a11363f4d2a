"""Look-ahead check (not a DVC stage): do the features, decisions or trades at or before a moment change when only
the data after it changes?

Builds the features of the current params (every family: price/volume, funding, premium, market, user columns;
timeframe, lag) from the download stage's source data (bars, funding, and the mark-price bars, market assets and user
columns the families read), and runs every trained policy (``train.seeds``, ``eval.checkpoint``) with its tuned
hysteresis, on the data and on copies altered or cut after each cut point (all of those inputs altered). Exit code
0: nothing leaked; 1: something at or before a cut changed (listed, naming the feature channel or the policy); 2: bad
input. Without checkpoints only the features are checked. See ``diffquant.evaluate.lookahead``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from diffquant.config import Config, Hysteresis
from diffquant.data.features import feature_names
from diffquant.data.inputs import read_raw, read_raw_market
from diffquant.errors import DataError
from diffquant.evaluate.lookahead import DEFAULT_CUTS, SourceData, check_lookahead, parse_cuts
from diffquant.evaluate.member import Member
from diffquant.evaluate.tuned import TunedThresholds
from diffquant.io import read_json
from diffquant.study.fold_data import read_folds
from diffquant.study.fold_models import fold_groups, keyed_folders
from diffquant.train import checkpoint, layout
from stages._cli import load_params, one_asset, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.lookahead")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--raw", default="data_source/raw", help="the download stage's folder (one per asset)")
    p.add_argument("--split", default="data_source/split", help="the split stage's folds (to find the newest)")
    p.add_argument("--train-dir", default="outputs/train", help="the train stage's folder")
    p.add_argument("--threshold-dir", default="outputs/thresholds", help="threshold-opt's folder")
    p.add_argument("--models", default="", help="a group's seed folders (default: the asset's in the newest fold)")
    p.add_argument("--thresholds", default="", help="their tuned hysteresis (default: the newest fold's)")
    p.add_argument("--cuts", default="", help="comma-separated UTC times, e.g. 2025-03-01T00:00,2025-06-01T12:00")
    p.add_argument("--n-cuts", type=int, default=DEFAULT_CUTS, help="cuts spread over the data when --cuts is empty")
    p.add_argument("--features-only", action="store_true", help="skip the policies")
    p.add_argument("--out", default="outputs/lookahead/report.json", help="the full report (JSON)")
    args = p.parse_args(argv)
    root, cfg = repo_root(), one_asset(load_params(args.params))

    raw, asset = root / args.raw, root / args.raw / cfg.data.universe[0]
    meta = read_json(asset / "meta.json", "download")
    stale = [f"data.{k}" for k, want in (("source", cfg.data.source), ("symbol", asset.name)) if meta.get(k) != want]
    if stale or not isinstance(meta.get("source_minutes"), int):
        what = f"was downloaded with other {', '.join(stale)}" if stale else "has no integer source_minutes"
        raise DataError(f"{asset / 'meta.json'}: the data {what}; re-run the download stage (dvc repro download)")
    data = SourceData(read_raw(asset, "download"), read_raw_market(raw, cfg.features, "download"))
    notes: list[str] = []
    policies: list[Member] = []
    if args.features_only:
        notes.append("policies skipped (--features-only)")
    else:
        names = feature_names(cfg.features, "num_trades" in data.raw.bars.columns)
        models, thresholds = Path(args.models), Path(args.thresholds)
        if not args.models or not args.thresholds:
            newest = newest_fold_files(cfg, root, args)
            models, thresholds = models if args.models else newest[0], thresholds if args.thresholds else newest[1]
        policies = load_policies(cfg, names, root, models, thresholds, notes)
    report = check_lookahead(data, cfg, policies, parse_cuts(args.cuts) or None, n_cuts=args.n_cuts, seed=cfg.seed)
    report = dataclasses.replace(report, notes=notes + report.notes)
    write_json(root / args.out, report.to_dict())
    print(report.summary())
    log.info("report in %s", root / args.out)
    return 0 if report.ok else 1


def newest_fold_files(cfg: Config, root: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The newest fold's seeds of the asset's model group and their thresholds, relative to ``root``: what the
    study would trade next."""
    data = read_folds(root / args.split)[-1]
    symbol = cfg.data.universe[0]
    (group,) = [g for g in fold_groups(cfg, data) if symbol in g.symbols]
    models = keyed_folders({"policy": Path(args.train_dir)})(group, "policy")
    return models, Path(args.threshold_dir) / data.fold.name / f"{symbol}.json"


def policy_checkpoint(models: Path, seed: int, cfg: Config) -> Path:
    """The one place this stage spells where a seed's trained policy lives."""
    return layout.checkpoint_path(models, seed, cfg.eval.checkpoint)


def traded_hysteresis(cfg: Config, root: Path, path: Path, seeds: list[int], notes: list[str]) -> dict[int, Hysteresis]:
    """The hysteresis each seed trades: threshold-opt's (tuned on val) where it exists for this checkpoint, else the
    params' ``eval.hysteresis`` (noted)."""
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


if __name__ == "__main__":
    run_stage(lambda: sys.exit(main()))
