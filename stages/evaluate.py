"""Evaluate stage: every fold's test window traded with its val choices, the folds stitched, pooled and judged.

Per fold (``diffquant.study.fold_run.judge_fold``): each asset's books (each seed's policy and the seed ensemble,
the MSE proxy's, momentum, buy-and-hold and flat) with metrics, PSR, DSR (every trial counted), stationary-bootstrap
intervals and the cost sweep; a portfolio's one book beside its baselines. Written to ``<out>/folds/<fold>/``.
Then the study (``diffquant.study.kinds.StudyKind.judge_study``): ``<out>/report.md``, the metrics JSON (the study's
summary), ``folds.csv``, ``tracks/<name>.csv`` (stitched per-bar returns), figures; PBO and the verdict over
the whole search (SPA, StepM, model confidence set, detectable edge). With ``registry.register``, the newest fold's
policies (each asset's, or the portfolio's book) become registered models, gated on their stitched tracks
(``diffquant.deploy.gates``, ``diffquant.tracking.study_registry``). Everything is logged to the train stage's run.
"""

from __future__ import annotations

import logging

from diffquant import tracking
from diffquant.compute.grid import with_unit_threads
from diffquant.deploy.gates import judge_tracks, registry_markdown, registry_summary
from diffquant.io import atomic_path
from diffquant.study.fold_data import read_folds
from diffquant.study.fold_models import keyed_folders
from diffquant.study.fold_run import fold_key, judge_fold, read_choices
from diffquant.study.kinds import study_kind
from diffquant.tracking.study_registry import publish_newest_fold
from stages._cli import load_params, parser, repo_root, run_stage, write_json

log = logging.getLogger("diffquant.stages.evaluate")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--split", default="data_source/split", help="the split stage's fold plan and cuts")
    p.add_argument("--train-dir", default="outputs/train")
    p.add_argument("--proxy-dir", default="outputs/proxy")
    p.add_argument("--thresholds", default="outputs/thresholds", help="threshold-opt's choices per fold")
    p.add_argument("--bars", default="data_source/bars", help="the aggregate stage's folder: the models' inputs")
    p.add_argument("--raw", default="data_source/raw", help="the download stage's folder (funding)")
    p.add_argument("--run-file", default="outputs/mlflow_run.json", help="the train stage's MLflow run")
    p.add_argument("--out", default="outputs/evaluate")
    p.add_argument("--metrics", default="outputs/metrics/evaluate.json")
    args = p.parse_args(argv)
    root, out = repo_root(), repo_root() / args.out
    cfg = load_params(args.params)
    folder_of = keyed_folders({"policy": root / args.train_dir, "proxy": root / args.proxy_dir})

    results, folders = [], []
    for data in read_folds(root / args.split):
        choices = read_choices(root / args.thresholds / data.fold.name, data, cfg)
        folders.append(out / "folds" / data.fold.name)
        key = fold_key(with_unit_threads(cfg), data)
        results.append(judge_fold(cfg, data, folder_of, choices, folders[-1], key))
    study = study_kind(cfg).judge_study(results, folders, out)
    verdicts = judge_tracks(study.gated, cfg.registry, study.benchmark, study.spa_p)
    summary = {**study.summary, "registry": registry_summary(verdicts, results[-1].name)}
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(f"{study.report}\n{registry_markdown(cfg.experiment, verdicts, results[-1].name)}")
    write_json(root / args.metrics, summary)

    parent = tracking.open_run(root, tracking.read_run_id(root / args.run_file))
    if cfg.registry.register:
        publish_newest_fold(cfg, root, parent, folders[-1], (root / args.bars, root / args.raw), verdicts)
    parent.log_metrics(study.metrics)
    parent.set_tags(study.tags)
    for name in study.artifacts:
        parent.log_artifact(out / name, "study")
    parent.finish()
    log.info("%s; report in %s", study.headline, out / "report.md")


if __name__ == "__main__":
    run_stage(main)
