"""Publishing a walk-forward study: each asset's policy of the newest fold (the model the procedure would trade
next) as an MLflow model of the study run, registered as ``diffquant-<experiment>-walkforward-<SYMBOL>``.

The gates are the evaluate stage's (``registry`` in params), judged on the asset's stitched out-of-sample track: every
fold's test window, each traded by the models trained before it. That track is the record of the procedure that made
the newest model (retrain, choose on val, trade), which is what a promotion vouches for. ``candidate`` always moves
to the new version, ``champion`` only when every gate passes. Version numbers stay in MLflow, out of DVC's outputs.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow

from diffquant import tracking
from diffquant.config import Config, RegistryConfig
from diffquant.data.contracts import read_parquet, sha256
from diffquant.deploy.fold_model import fold_bundle, fold_test_window
from diffquant.deploy.mlflow_model import as_model_input, log_policy_model
from diffquant.deploy.registry import Gate, judge_gates, log_datasets, register, registered_name

Verdicts = dict[str, list[Gate]]  # asset -> its gates


def model_key(experiment: str, symbol: str) -> str:
    """What ``registered_name`` turns into ``diffquant-<experiment>-walkforward-<SYMBOL>``."""
    return f"{experiment}-walkforward-{symbol}"


def judge_assets(summary: dict[str, Any], symbols: list[str], cfg: RegistryConfig) -> Verdicts:
    """Each asset's gates on its stitched track's policy ensemble (the study summary's numbers)."""
    return {s: judge_gates({"significance": summary["tracks"][s]["policy"]}, cfg) for s in symbols}


def registry_summary(verdicts: Verdicts, fold: str) -> dict[str, Any]:
    """The verdicts as ``study.json`` keeps them."""
    return {
        "fold": fold,
        "judged_on": "stitched out-of-sample track",
        "assets": {
            s: {
                "champion": all(g.passed for g in gates),
                "gates": [asdict(g) for g in gates],
            }
            for s, gates in verdicts.items()
        },
    }


def registry_markdown(experiment: str, verdicts: Verdicts, fold: str) -> str:
    """The report's registry section: per asset, which gate failed when one did."""
    lines = [
        "## Registry",
        "",
        f"Each asset's policy of the newest fold ({fold}) is registered as "
        f"`{registered_name(model_key(experiment, '<SYMBOL>'))}` with the alias `candidate`; `champion` needs every "
        "gate to pass on the asset's stitched out-of-sample track.",
        "",
    ]
    for symbol, gates in verdicts.items():
        failed = [g.describe() for g in gates if not g.passed]
        lines.append(f"- {symbol}: " + (f"not champion (failed: {'; '.join(failed)})" if failed else "champion"))
    return "\n".join([*lines, ""])


def publish_newest_fold(
    cfg: Config, root: Path, parent: tracking.Run, fold_dir: Path, universe: Path, verdicts: Verdicts
) -> dict[str, str]:
    """Log each judged asset's bundle of ``fold_dir`` as the model ``policy_<SYMBOL>`` of ``parent`` (with the
    asset's bars as a run input) and register it; returns asset -> registered version."""
    _, test_end = fold_test_window(fold_dir)
    files = {f"{s}_bars": universe / s / "bars.parquet" for s in verdicts}
    log_datasets(parent, files, "walk-forward", root, {name: sha256(path) for name, path in files.items()})
    versions = {}
    for symbol, gates in verdicts.items():
        bundle, checkpoints = fold_bundle(cfg, fold_dir, symbol)
        bars = read_parquet(files[f"{symbol}_bars"], "the universe stage")
        example = as_model_input(bars[bars["open_time"] < test_end].tail(bundle.min_bars))
        with mlflow.start_run(run_id=parent.run_id):
            info = log_policy_model(bundle, checkpoints, f"policy_{symbol}", example)
        versions[symbol] = register(parent, info.model_uri, model_key(cfg.experiment, symbol), gates)
    return versions
