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

import dataclasses
import logging
import sys
from pathlib import Path

from diffquant.data.features import feature_names
from diffquant.evaluate.lookahead import DEFAULT_CUTS, check_lookahead, parse_cuts, read_source_data
from diffquant.evaluate.member import Member
from diffquant.study.newest_policies import load_policies, newest_fold_files
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

    data = read_source_data(root / args.raw, cfg)
    notes: list[str] = []
    policies: list[Member] = []
    if args.features_only:
        notes.append("policies skipped (--features-only)")
    else:
        names = feature_names(cfg.features, "num_trades" in data.raw.bars.columns)
        models, thresholds = Path(args.models), Path(args.thresholds)
        if not args.models or not args.thresholds:
            newest = newest_fold_files(cfg, root / args.split, Path(args.train_dir), Path(args.threshold_dir))
            models, thresholds = models if args.models else newest[0], thresholds if args.thresholds else newest[1]
        policies = load_policies(cfg, names, root, models, thresholds, notes)
    report = check_lookahead(data, cfg, policies, parse_cuts(args.cuts) or None, n_cuts=args.n_cuts, seed=cfg.seed)
    report = dataclasses.replace(report, notes=notes + report.notes)
    write_json(root / args.out, report.to_dict())
    print(report.summary())
    log.info("report in %s", root / args.out)
    return 0 if report.ok else 1


if __name__ == "__main__":
    run_stage(lambda: sys.exit(main()))
