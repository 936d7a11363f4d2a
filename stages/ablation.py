"""Regulariser ablation: queue one DVC experiment per hybrid-loss term with that term switched off, then tabulate.

    python -m stages.ablation queue [--start]   # dvc exp run --queue -n ablate-<term> -S loss.lambda_<term>=0
    python -m stages.ablation table             # outputs/ablation/ablation.{md,csv} from the MLflow runs

Each queued experiment re-runs sanity, train (every seed), threshold-opt, evaluate and compare, and nothing before.
``--start`` also starts one queue worker (``dvc queue start``); follow it with ``dvc queue status``.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys

from diffquant import tracking
from diffquant.errors import DiffQuantError
from diffquant.evaluate.compare import ABLATION_PREFIX, LAMBDAS, ablation_table, study_table, to_markdown
from diffquant.io import atomic_path
from stages._cli import repo_root, run_stage, write_csv

log = logging.getLogger("diffquant.stages.ablation")


def _dvc(*args: str, detached: bool = False) -> None:
    """Run a dvc command; ``detached`` for one that leaves a worker behind, which would hold captured pipes open."""
    output = subprocess.DEVNULL if detached else subprocess.PIPE
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo_root(), stdout=output, stderr=output, text=True
    )
    if done.returncode:
        why = "" if detached else f": {done.stderr.strip()[-2000:]}"
        raise DiffQuantError(f"dvc {' '.join(args)} failed ({done.returncode}){why}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["queue", "table"])
    p.add_argument("--start", action="store_true", help="queue: also start one queue worker")
    p.add_argument("--out", default="outputs/ablation")
    args = p.parse_args(argv)
    root = repo_root()
    if args.action == "queue":
        for term in LAMBDAS:
            _dvc("exp", "run", "--queue", "-n", f"{ABLATION_PREFIX}{term}", "-S", f"loss.lambda_{term}=0")
            log.info("queued %s%s (loss.lambda_%s=0)", ABLATION_PREFIX, term, term)
        if args.start:
            _dvc("queue", "start", "-j", "1", detached=True)
            log.info("one queue worker started; follow it with: dvc queue status")
        return
    table = ablation_table(study_table(tracking.search_runs(root)))
    missing = [row.switched_off for row in table.itertuples() if row.sharpe != row.sharpe]
    out = root / args.out
    write_csv(out / "ablation.csv", table)
    with atomic_path(out / "ablation.md") as tmp:
        tmp.write_text(to_markdown(table))
    log.info(
        "ablation table in %s%s",
        out / "ablation.md",
        f"; no finished run yet for: {', '.join(missing)}" if missing else "",
    )


if __name__ == "__main__":
    run_stage(main)
