"""Study stage: the folds' out-of-sample tracks stitched, pooled and judged (``diffquant.study.study_outputs``).

Reads the folds stage's ``plan.json`` and each fold's result; writes ``<out>/report.md`` (a single-asset study: the
universe book against buy-and-hold first, the verdict over the whole search, then each asset, then each fold; a
portfolio study: its book against the baselines, then the verdict), ``study.json``, ``folds.csv``,
``tracks/<name>.csv`` (the stitched per-bar returns) and the figures, and logs them (the headline track among them)
to the folds stage's MLflow parent run. With ``registry.register``, the newest fold's policies (each asset's, or the
portfolio's book) become registered models, gated on their stitched tracks (``diffquant.deploy.gates``,
``diffquant.tracking.study_registry``).
Run as ``python -m stages.study``.
"""

from __future__ import annotations

import logging

from diffquant import tracking
from diffquant.deploy.gates import judge_tracks, registry_markdown, registry_summary
from diffquant.io import atomic_path, read_json
from diffquant.study.fold_run import load_fold
from diffquant.study.study_outputs import write_study
from diffquant.tracking.study_registry import publish_newest_fold
from stages._cli import load_params, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.study")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--folds", default="outputs/folds", help="the folds stage's folder")
    p.add_argument("--bars", default="data_source/bars", help="the aggregate stage's folder (the models' inputs)")
    p.add_argument("--raw", default="data_source/raw", help="the download stage's folder (funding)")
    p.add_argument("--out", default="outputs/study")
    p.add_argument("--metrics", default="outputs/metrics/study.json")
    args = p.parse_args(argv)
    root, out, folds_dir = repo_root(), repo_root() / args.out, repo_root() / args.folds
    cfg = load_params(args.params)

    plan = read_json(folds_dir / "plan.json", "the folds stage")
    folds = [folds_dir / fold["name"] for fold in plan["folds"]]
    results = [load_fold(folder) for folder in folds]
    study = write_study(cfg, results, folds, out)
    verdicts = judge_tracks(study.gated, cfg.registry, study.benchmark, study.spa_p)
    summary = {**study.summary, "registry": registry_summary(verdicts, results[-1].name)}
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(f"{study.report}\n{registry_markdown(cfg.experiment, verdicts, results[-1].name)}")
    write_json(root / args.metrics, summary)

    parent = tracking.open_run(root, tracking.read_run_id(folds_dir / "mlflow_run.json"))
    if cfg.registry.register:
        publish_newest_fold(cfg, root, parent, folds[-1], (root / args.bars, root / args.raw), verdicts)
    parent.log_metrics(study.metrics)
    parent.set_tags(study.tags)
    for name in study.artifacts:
        parent.log_artifact(out / name, "study")
    log.info("%s; report in %s", study.headline, out / "report.md")


if __name__ == "__main__":
    run_stage(main)
