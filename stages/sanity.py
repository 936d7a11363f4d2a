"""Sanity stage: gradient flow, trend bias and signal use on synthetic markets; any FAIL stops the pipeline."""

from __future__ import annotations

import logging

import torch

from diffquant.data.splits import Samples
from diffquant.errors import DiffQuantError
from diffquant.model.policy import PolicyNetwork
from diffquant.sim.losses import Objective
from diffquant.study.fold_data import newest_cut
from diffquant.train.episodes import EpisodeExecution
from diffquant.train.sanity import run_checks
from stages._cli import load_params, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.sanity")


class SanityError(DiffQuantError):
    """A pre-training check failed: the loss, simulator or model cannot learn what they should."""


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--split", default="data_source/split", help="the split stage's fold plan: the feature channels")
    p.add_argument("--out", default="outputs/metrics/sanity.json")
    args = p.parse_args(argv)
    root = repo_root()
    cfg = load_params(args.params)
    cut = newest_cut(root / args.split, cfg.data.universe[0])  # one cut's channels: every fold has the same
    n_features = len(Samples.load(cut / "train.npz").feature_names)

    torch.manual_seed(cfg.seed)
    model = PolicyNetwork(cfg.model, n_features, cfg.window.context)
    objective = Objective(cfg.loss, cfg.sim.smooth_abs_eps)
    checks = run_checks(model, objective, cfg.sim, cfg.window.horizon, cfg.seed, execution=EpisodeExecution.of(cfg))
    write_json(root / args.out, {c["name"]: {"passed": c["passed"], "value": c["value"]} for c in checks})
    for c in checks:
        log.info("%s %s: %s", "PASS" if c["passed"] else "FAIL", c["name"], c["detail"])
    failed = [c["name"] for c in checks if not c["passed"]]
    if failed:
        raise SanityError(f"sanity check(s) failed: {', '.join(failed)} (details above, in {args.out})")


if __name__ == "__main__":
    run_stage(main)
