"""Compare stage: one table (markdown + CSV) over every MLflow run of the experiment, with buy-and-hold beside; and
``studies.{md,csv}``, every walk-forward study (single-asset and portfolio) side by side."""

from __future__ import annotations

import logging

from diffquant import tracking
from diffquant.evaluate.compare import comparison_table, study_table, to_markdown
from diffquant.io import atomic_path
from stages._cli import parser, repo_root, run_stage, write_csv, write_json

log = logging.getLogger("diffquant.stages.compare")
NO_STUDY = "No walk-forward study in this MLflow store yet: `dvc repro walkforward/dvc.yaml` (docs/walk_forward.md).\n"


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--out", default="outputs/compare")
    p.add_argument("--metrics", default="outputs/metrics/compare.json")
    args = p.parse_args(argv)
    root, out = repo_root(), repo_root() / args.out

    runs = tracking.search_runs(root)
    table, studies = comparison_table(runs), study_table(runs)
    write_csv(out / "compare.csv", table)
    with atomic_path(out / "compare.md") as tmp:
        tmp.write_text(to_markdown(table.drop(columns=["run_id", "start_time"])))
    write_csv(out / "studies.csv", studies)
    with atomic_path(out / "studies.md") as tmp:
        tmp.write_text(to_markdown(studies.drop(columns=["run_id", "start_time"])) if len(studies) else NO_STUDY)
    best = table["test_sharpe"].astype(float).max() if len(table) else None
    write_json(root / args.metrics, {"runs": len(table), "best_test_sharpe": None if best != best else best})
    log.info("%d evaluated run(s), %d study run(s); tables in %s", len(table), len(studies), out)


if __name__ == "__main__":
    run_stage(main)
