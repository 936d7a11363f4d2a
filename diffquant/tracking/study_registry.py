"""Publishing a walk-forward study: each asset's policy of the newest fold (the model the procedure would trade
next) as an MLflow model of the study run, registered as ``diffquant-<experiment>-<SYMBOL>``; for a
portfolio study, the book (``diffquant-<experiment>-portfolio``). Gates: ``deploy.gates.judge_tracks``.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

from diffquant.config import Config
from diffquant.data.contracts import to_ms
from diffquant.data.inputs import model_table, stage_inputs
from diffquant.deploy.book_bundle import BookBundle, as_book_input
from diffquant.deploy.bundle import PolicyBundle
from diffquant.deploy.fold_model import fold_book_bundle, fold_bundle, fold_test_window
from diffquant.deploy.gates import Verdicts, model_key
from diffquant.evaluate.entries import PORTFOLIO
from diffquant.io import sha256
from diffquant.tracking.models import log_policy_model
from diffquant.tracking.registry import log_datasets, register
from diffquant.tracking.runs import Run


def publish_newest_fold(
    cfg: Config, root: Path, parent: Run, fold_dir: Path, data: tuple[Path, Path], verdicts: Verdicts
) -> dict[str, str]:
    """Log each judged policy of ``fold_dir`` (an asset's, or the portfolio's book) as the model ``policy_<NAME>`` of
    ``parent``, with its assets' bars as run inputs, and register it; returns name -> registered version. ``data``:
    the aggregate and download stages' folders, where the models' input examples come from."""
    bars_dir, raw_dir = data
    _, test_end = fold_test_window(fold_dir)
    end_ms = int(to_ms(pd.Series([test_end]))[0])

    def before_test_end(symbol: str) -> pd.DataFrame:
        """The asset's model-input table (bars and the columns its features read) before the test end."""
        table = model_table(stage_inputs(bars_dir, raw_dir, symbol, cfg), cfg.features)
        return table[table["open_time"] < end_ms]

    versions = {}
    for name, gates in verdicts.items():
        bundle: PolicyBundle | BookBundle
        if name == PORTFOLIO:
            bundle, checkpoints = fold_book_bundle(cfg, fold_dir)
            symbols = bundle.symbols
            example = as_book_input({s: before_test_end(s).tail(bundle.min_bars) for s in symbols})
        else:
            bundle, checkpoints = fold_bundle(cfg, fold_dir, name)
            symbols = (name,)
            example = before_test_end(name).tail(bundle.min_bars).reset_index(drop=True)
        files = {f"{s}_bars": bars_dir / s / "bars.parquet" for s in symbols}
        log_datasets(parent, files, "walk-forward", root, {n: sha256(path) for n, path in files.items()})
        with mlflow.start_run(run_id=parent.run_id):
            info = log_policy_model(bundle, checkpoints, f"policy_{name}", example)
        versions[name] = register(parent, info.model_uri, model_key(cfg.experiment, name), gates)
    return versions
