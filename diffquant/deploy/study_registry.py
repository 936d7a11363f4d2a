"""Publishing a walk-forward study: each asset's policy of the newest fold (the model the procedure would trade
next) as an MLflow model of the study run, registered as ``diffquant-<experiment>-walkforward-<SYMBOL>``; for a
portfolio study, the book (``diffquant-<experiment>-walkforward-portfolio``).

The gates are the evaluate stage's (``registry`` in params), judged on the policy's stitched out-of-sample track:
every fold's test window, each traded by the models trained before it. That track is the record of the procedure
that made the newest model (retrain, choose on val, trade), which is what a promotion vouches for. ``candidate``
always moves to the new version, ``champion`` only when every gate passes. Version numbers stay in MLflow, out of
DVC's outputs.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from diffquant import tracking
from diffquant.config import Config, RegistryConfig
from diffquant.data.contracts import sha256, to_ms
from diffquant.data.inputs import model_table, universe_inputs
from diffquant.deploy.book_bundle import BookBundle, as_book_input
from diffquant.deploy.bundle import PolicyBundle
from diffquant.deploy.fold_model import fold_book_bundle, fold_bundle, fold_test_window
from diffquant.deploy.mlflow_model import log_policy_model
from diffquant.deploy.registry import Gate, judge_gates, log_datasets, register, registered_name
from diffquant.study.book_run import PORTFOLIO

Verdicts = dict[str, list[Gate]]  # policy name (an asset, or "portfolio" for the book) -> its gates


def model_key(experiment: str, name: str) -> str:
    """What ``registered_name`` turns into ``diffquant-<experiment>-walkforward-<NAME>``."""
    return f"{experiment}-walkforward-{name}"


def judge_tracks(gated: dict[str, dict[str, Any]], cfg: RegistryConfig, benchmark: str | None = None) -> Verdicts:
    """Each policy's gates on its stitched entry (significance numbers); ``benchmark`` names what the interval of
    the Sharpe difference is taken against when it is not buy-and-hold (a portfolio's: 1/N)."""
    verdicts = {}
    for name, entry in gated.items():
        gates = judge_gates({"significance": entry}, cfg)
        if benchmark is not None:
            label = f"Sharpe minus {benchmark}'s, 95% interval low"
            gates = [replace(g, label=label) if g.key == "beats_buy_and_hold" else g for g in gates]
        verdicts[name] = gates
    return verdicts


def registry_summary(verdicts: Verdicts, fold: str) -> dict[str, Any]:
    """The verdicts as ``study.json`` keeps them."""
    return {
        "fold": fold,
        "judged_on": "stitched out-of-sample track",
        "policies": {
            s: {
                "champion": all(g.passed for g in gates),
                "gates": [asdict(g) for g in gates],
            }
            for s, gates in verdicts.items()
        },
    }


def registry_markdown(experiment: str, verdicts: Verdicts, fold: str) -> str:
    """The report's registry section: per policy, which gate failed when one did."""
    lines = [
        "## Registry",
        "",
        f"The newest fold's ({fold}) policies are registered as `{registered_name(model_key(experiment, '<NAME>'))}` "
        "(NAME: the asset, or `portfolio` for the book) with the alias `candidate`; `champion` needs every gate to "
        "pass on its stitched out-of-sample track.",
        "",
    ]
    for symbol, gates in verdicts.items():
        failed = [g.describe() for g in gates if not g.passed]
        lines.append(f"- {symbol}: " + (f"not champion (failed: {'; '.join(failed)})" if failed else "champion"))
    return "\n".join([*lines, ""])


def publish_newest_fold(
    cfg: Config, root: Path, parent: tracking.Run, fold_dir: Path, universe: Path, verdicts: Verdicts
) -> dict[str, str]:
    """Log each judged policy of ``fold_dir`` (an asset's, or the portfolio's book) as the model ``policy_<NAME>`` of
    ``parent``, with its assets' bars as run inputs, and register it; returns name -> registered version."""
    _, test_end = fold_test_window(fold_dir)
    end_ms = int(to_ms(pd.Series([test_end]))[0])

    def before_test_end(symbol: str) -> pd.DataFrame:
        """The asset's model-input table (bars and the columns its features read) before the test end."""
        table = model_table(universe_inputs(universe, symbol, cfg), cfg.features)
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
        files = {f"{s}_bars": universe / s / "bars.parquet" for s in symbols}
        log_datasets(parent, files, "walk-forward", root, {n: sha256(path) for n, path in files.items()})
        with mlflow.start_run(run_id=parent.run_id):
            info = log_policy_model(bundle, checkpoints, f"policy_{name}", example)
        versions[name] = register(parent, info.model_uri, model_key(cfg.experiment, name), gates)
    return versions
