"""Compare stage: one table (``compare.{md,csv}``) over every evaluated study in the MLflow store (single-asset and
portfolio side by side, each with its headline book beside holding and its verdict), and SPA over the studies'
headline books read back from their runs (``diffquant.study.across``)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pandas as pd

from diffquant import tracking
from diffquant.evaluate.compare import headline_artifact, study_table, to_markdown
from diffquant.io import atomic_path
from diffquant.study.across import across_markdown, judge_studies
from stages._cli import parser, repo_root, run_stage, write_csv, write_json

log = logging.getLogger("diffquant.stages.compare")
NO_STUDY = "No evaluated study in this MLflow store yet: `dvc repro` (docs/walk_forward.md).\n"


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--out", default="outputs/compare")
    p.add_argument("--metrics", default="outputs/metrics/compare.json")
    args = p.parse_args(argv)
    root, out = repo_root(), repo_root() / args.out

    runs = tracking.search_runs(root)
    with tempfile.TemporaryDirectory() as scratch:

        def load(run_id: str, kind: str) -> pd.DataFrame | None:
            path = tracking.download_artifact(root, run_id, headline_artifact(kind), Path(scratch) / run_id)
            return None if path is None else pd.read_csv(path, parse_dates=["time"])

        studies, across = judge_studies(study_table(runs), load)
    write_csv(out / "compare.csv", studies)
    with atomic_path(out / "compare.md") as tmp:
        shown = studies.drop(columns=["run_id", "start_time"])
        tmp.write_text(f"{to_markdown(shown)}\n{across_markdown(across)}" if len(studies) else NO_STUDY)
    best = studies["sharpe"].astype(float).max() if len(studies) else None
    write_json(root / args.metrics, {"studies": len(studies), "best_sharpe": None if best != best else best})
    log.info("%d evaluated stud(ies); table in %s", len(studies), out / "compare.md")


if __name__ == "__main__":
    run_stage(main)
