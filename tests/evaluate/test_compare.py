"""The cross-run tables: only evaluated experiment runs, newest first; the ablation picks its runs by name."""

from __future__ import annotations

import math

import pandas as pd

from diffquant.evaluate.compare import LAMBDAS, ablation_table, comparison_table
from diffquant.evaluate.metric_names import metric_name


def _runs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_id": ["old", "seed", "proxy", "new", "abl", "abl_old", "unevaluated"],
            "start_time": [1, 2, 3, 4, 5, 0, 6],
            "tags.role": ["policy", "policy_seed", "proxy", "policy", "policy", "policy", "policy"],
            "tags.dvc_exp_name": [None, None, None, None, "ablate-bias", "ablate-bias", None],
            "params.loss.lambda_bias": ["0.25", "0.25", None, "0.25", "0", "0", "0.25"],
            f"metrics.{metric_name('test', 'sharpe')}": [1.0, 9.0, 9.0, 2.0, 3.0, 4.0, float("nan")],
        }
    )


def test_comparison_lists_evaluated_parent_runs_newest_first() -> None:
    table = comparison_table(_runs())
    assert list(table["run_id"]) == ["abl", "new", "old", "abl_old"]  # no seed, proxy or unevaluated run


def test_ablation_takes_the_newest_baseline_and_the_newest_run_of_each_term() -> None:
    table = ablation_table(comparison_table(_runs()))
    assert list(table["switched_off"]) == ["(none)", *(f"lambda_{t}" for t in LAMBDAS)]
    rows = table.set_index("switched_off")
    assert rows.loc["(none)", "test_sharpe"] == 2.0 and rows.loc["lambda_bias", "test_sharpe"] == 3.0
    assert rows.loc["lambda_bias", "lambda_bias"] == "0"
    assert math.isnan(rows.loc["lambda_flat", "test_sharpe"])  # not run yet: an empty row, not a missing one
    assert rows.loc["lambda_flat", "note"] == "no evaluated run" and rows.loc["lambda_bias", "note"] == ""


def test_metric_names_are_the_documented_mlflow_keys() -> None:
    """Users filter runs by these names (README, MLflow UI): renaming one is a breaking change."""
    assert metric_name("test", "sharpe") == "test_sharpe"
    assert metric_name("val", "dsr") == "tuned_val_dsr"  # "val_sharpe" is a seed run's training curve
    assert metric_name("backtest", "sharpe_seed_median") == "backtest_sharpe_seed_median"
    assert metric_name("test", "sharpe", "buy_and_hold") == "test_buy_and_hold_sharpe"
