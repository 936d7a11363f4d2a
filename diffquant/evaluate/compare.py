"""One table over every tracked run: what was trained, and what it earned beside buy-and-hold on the same bars."""

from __future__ import annotations

import math

import pandas as pd

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
        column
        for split in ("test", "backtest")
        for column in (
            (f"{split}_sharpe", f"metrics.{split}_sharpe"),
            (f"{split}_sharpe_seed_median", f"metrics.{split}_sharpe_seed_median"),
            (f"{split}_sharpe_seed_min", f"metrics.{split}_sharpe_seed_min"),
            (f"{split}_sharpe_seed_max", f"metrics.{split}_sharpe_seed_max"),
            (f"{split}_ci_low", f"metrics.{split}_sharpe_ci_low"),
            (f"{split}_ci_high", f"metrics.{split}_sharpe_ci_high"),
            (f"{split}_psr", f"metrics.{split}_psr"),
            (f"{split}_dsr", f"metrics.{split}_dsr"),
            (f"{split}_return_pct", f"metrics.{split}_total_return_pct"),
            (f"{split}_break_even_bps", f"metrics.{split}_break_even_bps"),
            (f"{split}_proxy_sharpe", f"metrics.{split}_proxy_sharpe"),
            (f"{split}_momentum_sharpe", f"metrics.{split}_momentum_sharpe"),
            (f"{split}_bh_sharpe", f"metrics.{split}_buy_and_hold_sharpe"),
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
ABLATION_COLUMNS = ("val_sharpe_median", "test_sharpe", "test_sharpe_seed_median", "test_sharpe_seed_min",
                    "test_sharpe_seed_max", "test_dsr", "backtest_sharpe", "backtest_sharpe_seed_median",
                    "backtest_sharpe_seed_min", "backtest_sharpe_seed_max", "backtest_dsr")  # fmt: skip


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
