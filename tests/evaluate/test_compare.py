"""The cross-run tables: only evaluated experiment runs, newest first; the ablation picks its runs by name; the
studies table sets single-asset and portfolio studies side by side, each by its own headline book."""

from __future__ import annotations

import math

import pandas as pd

from diffquant.evaluate.compare import LAMBDAS, ablation_table, comparison_table, study_table
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


def test_the_studies_table_sets_single_and_portfolio_studies_side_by_side() -> None:
    nan = float("nan")
    runs = pd.DataFrame(
        {
            "run_id": ["single", "book", "unjudged", "policy", "older"],
            "start_time": [2, 3, 4, 5, 1],
            "tags.role": ["study", "study", "study", "policy", "study"],
            "tags.symbols": ["BTCUSDT,ETHUSDT", "BTCUSDT,ETHUSDT,XRPUSDT", "BTCUSDT", "BTCUSDT", "BTCUSDT"],
            "params.model.kind": ["single", "portfolio", "portfolio", "single", None],  # None: before model.kind
            "metrics.universe/policy/sharpe": [-0.5, nan, nan, nan, 0.7],
            "metrics.universe/buy_and_hold/sharpe": [0.4, nan, nan, nan, 0.6],
            "metrics.universe/policy/dsr": [0.0, nan, nan, nan, 0.1],
            "metrics.portfolio/portfolio/sharpe": [nan, 1.5, nan, nan, nan],
            "metrics.portfolio/portfolio/sharpe_ci_low": [nan, -0.5, nan, nan, nan],
            "metrics.portfolio/equal_weight/sharpe": [nan, 0.3, nan, nan, nan],
            "metrics.portfolio/single_average/sharpe": [nan, -0.2, nan, nan, nan],
            "metrics.pbo": [0.1, 0.4, nan, nan, nan],
            "metrics.test_sharpe": [nan, nan, nan, 2.0, nan],
        }
    )
    table = study_table(runs).set_index("run_id")
    assert list(table.index) == ["book", "single", "older"]  # judged studies only, newest first
    assert list(table["kind"]) == ["portfolio", "single", "single"] and list(table["assets"]) == [3, 2, 1]
    assert table.loc["book", "sharpe"] == 1.5 and table.loc["book", "sharpe_ci_low"] == -0.5
    assert table.loc["book", "hold_1_over_n_sharpe"] == 0.3 and table.loc["book", "single_average_sharpe"] == -0.2
    assert table.loc["single", "sharpe"] == -0.5 and table.loc["single", "hold_1_over_n_sharpe"] == 0.4
    assert math.isnan(table.loc["single", "single_average_sharpe"])  # a single-asset study is that average itself
    none = study_table(runs[runs["tags.role"] != "study"])
    assert none.empty and list(none.columns) == list(study_table(runs).columns)  # the CSV keeps its header
