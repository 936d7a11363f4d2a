"""One table over every tracked run: what was trained, and what it earned beside buy-and-hold on the same bars."""

from __future__ import annotations

import math

import pandas as pd

# (column in the table, column of mlflow.search_runs)
COLUMNS = (
    ("run", "tags.mlflow.runName"),
    ("dvc_exp", "tags.dvc_exp_name"),
    ("backbone", "params.model.backbone"),
    ("loss", "params.loss.type"),
    ("lambda_bias", "params.loss.lambda_bias"),
    ("epochs", "params.train.epochs"),
    ("seed", "params.seed"),
    ("best_epoch", "metrics.best_epoch"),
    ("val_sharpe", "metrics.best_val_sharpe"),
    ("val_sharpe_tuned", "metrics.tuned_val_sharpe"),
    ("test_sharpe", "metrics.test_sharpe"),
    ("test_return_pct", "metrics.test_total_return_pct"),
    ("test_sharpe_ci_low", "metrics.test_sharpe_ci_low"),
    ("test_sharpe_ci_high", "metrics.test_sharpe_ci_high"),
    ("test_psr", "metrics.test_psr"),
    ("test_max_dd_pct", "metrics.test_max_drawdown_pct"),
    ("test_turnover", "metrics.test_turnover"),
    ("test_bh_sharpe", "metrics.test_buy_and_hold_sharpe"),
    ("test_bh_return_pct", "metrics.test_buy_and_hold_total_return_pct"),
    ("backtest_sharpe", "metrics.backtest_sharpe"),
    ("backtest_return_pct", "metrics.backtest_total_return_pct"),
    ("backtest_sharpe_ci_low", "metrics.backtest_sharpe_ci_low"),
    ("backtest_sharpe_ci_high", "metrics.backtest_sharpe_ci_high"),
    ("backtest_psr", "metrics.backtest_psr"),
    ("backtest_max_dd_pct", "metrics.backtest_max_drawdown_pct"),
    ("backtest_turnover", "metrics.backtest_turnover"),
    ("backtest_bh_sharpe", "metrics.backtest_buy_and_hold_sharpe"),
    ("backtest_bh_return_pct", "metrics.backtest_buy_and_hold_total_return_pct"),
    ("run_id", "run_id"),
    ("start_time", "start_time"),
)


def comparison_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished, evaluated runs (``mlflow.search_runs`` frame), newest first; absent values stay empty (NaN)."""
    if runs.empty:
        return pd.DataFrame(columns=[c for c, _ in COLUMNS])
    table = pd.DataFrame({name: runs.get(src, pd.NA) for name, src in COLUMNS})
    if "metrics.test_sharpe" in runs:
        table = table[runs["metrics.test_sharpe"].notna().to_numpy()]
    return table.sort_values("start_time", ascending=False, kind="stable").reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table; numbers with 3 decimals, missing values blank."""

    def cell(v: object) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return ""
        if isinstance(v, float):
            return f"{v:.0f}" if v.is_integer() and abs(v) >= 1 else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"
