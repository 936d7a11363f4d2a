"""One table over every tracked run: what was trained, and what it earned beside buy-and-hold on the same bars."""

from __future__ import annotations

import math

import pandas as pd

from diffquant.evaluate.metric_names import metric_name

LAMBDAS = ("sharpe", "turnover", "drawdown", "terminal", "flat", "bias")

# (column in the table, column of mlflow.search_runs); a policy's Sharpe is its seed ensemble's
COLUMNS = (
    ("run", "tags.mlflow.runName"),
    ("dvc_exp", "tags.dvc_exp_name"),
    ("backbone", "params.model.backbone"),
    ("loss", "params.loss.type"),
    *((f"lambda_{t}", f"params.loss.lambda_{t}") for t in LAMBDAS),
    ("epochs", "params.train.epochs"),
    ("seeds", "tags.seeds"),
    ("val_sharpe_median", "metrics.best_val_sharpe_median"),
    *(
        (f"{split}_{column}", f"metrics.{metric_name(split, metric, book)}")
        for split in ("test", "backtest")
        for column, metric, book in (
            ("sharpe", "sharpe", "policy"),
            ("sharpe_seed_median", "sharpe_seed_median", "policy"),
            ("sharpe_seed_min", "sharpe_seed_min", "policy"),
            ("sharpe_seed_max", "sharpe_seed_max", "policy"),
            ("ci_low", "sharpe_ci_low", "policy"),
            ("ci_high", "sharpe_ci_high", "policy"),
            ("psr", "psr", "policy"),
            ("dsr", "dsr", "policy"),
            ("return_pct", "total_return_pct", "policy"),
            ("break_even_bps", "break_even_bps", "policy"),
            ("proxy_sharpe", "sharpe", "proxy"),
            ("momentum_sharpe", "sharpe", "momentum"),
            ("bh_sharpe", "sharpe", "buy_and_hold"),
        )
    ),
    ("run_id", "run_id"),
    ("start_time", "start_time"),
)


def comparison_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Evaluated experiment runs (``mlflow.search_runs`` frame; not their per-seed children or the proxy's runs),
    newest first; absent values stay empty (NaN)."""
    if runs.empty:
        return pd.DataFrame(columns=[c for c, _ in COLUMNS])
    table = pd.DataFrame({name: runs.get(src, pd.NA) for name, src in COLUMNS})
    role = runs.get("tags.role", pd.Series("", index=runs.index))
    tested = runs.get("metrics.test_sharpe", pd.Series(float("nan"), index=runs.index)).notna()
    table = table[((role == "policy") & tested).to_numpy(bool)]
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


ABLATION_PREFIX = "ablate-"
ABLATION_COLUMNS = (
    "val_sharpe_median",
    "test_sharpe",
    "test_sharpe_seed_median",
    "test_sharpe_seed_min",
    "test_sharpe_seed_max",
    "test_dsr",
    "backtest_sharpe",
    "backtest_sharpe_seed_median",
    "backtest_sharpe_seed_min",
    "backtest_sharpe_seed_max",
    "backtest_dsr",
)


def ablation_table(table: pd.DataFrame) -> pd.DataFrame:
    """The regulariser ablation from a :func:`comparison_table`: the newest run of each ``ablate-<term>``
    experiment (that hybrid term switched off) below the newest run made outside ``dvc exp`` (every term on)."""
    named = table["dvc_exp"].fillna("").astype(str)
    keep = [*(f"lambda_{t}" for t in LAMBDAS), *ABLATION_COLUMNS]

    def newest(mask: pd.Series, label: str) -> dict[str, object]:
        found = table[mask.to_numpy(bool)].head(1)  # the table is sorted newest first
        if len(found):
            return {"switched_off": label, **found.iloc[0][keep].to_dict(), "note": ""}
        # a term without an evaluated run keeps an empty row (queued, running, or stopped by a stage: the queue says)
        return {"switched_off": label, **dict.fromkeys(keep, float("nan")), "note": "no evaluated run"}

    rows = [newest(named == "", "(none)")]
    rows += [newest(named == f"{ABLATION_PREFIX}{term}", f"lambda_{term}") for term in LAMBDAS]
    return pd.DataFrame(rows)
