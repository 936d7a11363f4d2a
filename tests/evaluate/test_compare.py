"""The cross-run table: only evaluated study runs, newest first, single-asset and portfolio side by side, each by its
own headline book; the ablation picks its runs by name."""

from __future__ import annotations

import math

import pandas as pd

from diffquant.evaluate.compare import LAMBDAS, ablation_table, study_table


def _runs() -> pd.DataFrame:
    """Study runs as mlflow.search_runs returns them: the parent runs of train (role study), with the children and
    the proxy's runs that the table must leave out."""
    return pd.DataFrame(
        {
            "run_id": ["old", "seed", "proxy", "new", "abl", "abl_old", "unevaluated"],
            "start_time": [1, 2, 3, 4, 5, 0, 6],
            "tags.role": ["study", "policy_seed", "proxy", "study", "study", "study", "study"],
            "tags.dvc_exp_name": [None, None, None, None, "ablate-bias", "ablate-bias", None],
            "params.loss.lambda_bias": ["0.25", "0.25", None, "0.25", "0", "0", "0.25"],
            "metrics.universe/policy/sharpe": [1.0, 9.0, 9.0, 2.0, 3.0, 4.0, float("nan")],
        }
    )


def test_the_table_lists_evaluated_study_runs_newest_first() -> None:
    table = study_table(_runs())
    assert list(table["run_id"]) == ["abl", "new", "old", "abl_old"]  # no seed, proxy or unevaluated run


def test_ablation_takes_the_newest_baseline_and_the_newest_run_of_each_term() -> None:
    table = ablation_table(study_table(_runs()))
    assert list(table["switched_off"]) == ["(none)", *(f"lambda_{t}" for t in LAMBDAS)]
    rows = table.set_index("switched_off")
    assert rows.loc["(none)", "sharpe"] == 2.0 and rows.loc["lambda_bias", "sharpe"] == 3.0
    assert rows.loc["lambda_bias", "lambda_bias"] == "0"
    assert math.isnan(rows.loc["lambda_flat", "sharpe"])  # not run yet: an empty row, not a missing one
    assert rows.loc["lambda_flat", "note"] == "no evaluated run" and rows.loc["lambda_bias", "note"] == ""


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
