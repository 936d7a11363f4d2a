"""One table over every evaluated study (every ``dvc repro`` or ``dvc exp run`` of the chain), single-asset and
portfolio side by side: what was trained, what its headline book earned beside holding, and the verdict."""

from __future__ import annotations

import math

import pandas as pd

from diffquant.evaluate.metric_names import study_metric, verdict_metric

LAMBDAS = ("sharpe", "turnover", "drawdown", "terminal", "flat", "bias")

# A study's headline book, per model kind: (track, book) of the evaluate stage's metrics (``study_metric``). The
# single-asset study's universe book is its single-asset policies held equally; the portfolio's, its one book.
STUDY_BOOKS = {
    "single": {"policy": ("universe", "policy"), "hold_1_over_n": ("universe", "buy_and_hold")},
    "portfolio": {
        "policy": ("portfolio", "portfolio"),
        "hold_1_over_n": ("portfolio", "equal_weight"),
        "single_average": ("portfolio", "single_average"),
        "inverse_vol": ("portfolio", "inverse_vol"),
        "xs_momentum": ("portfolio", "xs_momentum"),
        "hold_1_over_n_vt": ("portfolio", "equal_weight_vt"),
        "carry": ("portfolio", "carry"),
        "funding_extremes": ("portfolio", "funding_extremes"),
    },
}
STUDY_METRICS = ("sharpe", "sharpe_ci_low", "sharpe_ci_high", "dsr")
STUDY_BASELINES = (
    *("hold_1_over_n", "single_average", "inverse_vol", "xs_momentum"),
    *("hold_1_over_n_vt", "carry", "funding_extremes"),
)
VERDICT_COLUMNS = ("spa_p", "stepm_size", "mde_sharpe")  # the verdict's metrics (``verdict_metric``) shown
STUDY_COLUMNS = (
    *("run", "dvc_exp", "kind", "scheme", "assets", "backbone", "loss", *(f"lambda_{t}" for t in LAMBDAS)),
    *("epochs", "seeds"),
    *STUDY_METRICS,
    *(f"{b}_sharpe" for b in STUDY_BASELINES),
    "pbo",
    *VERDICT_COLUMNS,
    *("mcs", "run_id", "start_time"),
)


def headline_artifact(kind: str) -> str:
    """Where the evaluate stage logs a study's headline track (its universe book, or the portfolio's): the artifact
    compare reads back to run SPA across studies."""
    return f"study/{STUDY_BOOKS[kind]['policy'][0]}.csv"


def study_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Every judged study (the train stage's parent run, role ``study``, after evaluate), newest first: its kind,
    folds and assets, the headline book's Sharpe with its 95% interval and DSR, the baselines' Sharpe, PBO, and the
    verdict: SPA p-value, StepM set size, detectable edge and the model confidence set (empty for studies judged
    before the verdict existed; ``diffquant.study.across`` adds the false-discovery adjustment over the studies)."""
    rows = []
    for _, run in runs.iterrows():
        kind = run.get("params.model.kind")
        kind = kind if isinstance(kind, str) and kind else "single"  # studies logged before model.kind existed
        if run.get("tags.role") != "study" or kind not in STUDY_BOOKS:
            continue
        books = STUDY_BOOKS[kind]
        if pd.isna(_study_number(run, books, "policy", "sharpe")):
            continue
        row = {
            "run": run.get("tags.mlflow.runName"),
            "dvc_exp": run.get("tags.dvc_exp_name"),
            "kind": kind,
            "scheme": run.get("tags.scheme"),
            "assets": len(str(run.get("tags.symbols", "")).split(",")),
            "backbone": run.get("params.model.backbone"),
            "loss": run.get("params.loss.type"),
            **{f"lambda_{t}": run.get(f"params.loss.lambda_{t}") for t in LAMBDAS},
            "epochs": run.get("params.train.epochs"),
            "seeds": run.get("params.train.seeds"),
        }
        row |= {metric: _study_number(run, books, "policy", metric) for metric in STUDY_METRICS}
        row |= {f"{name}_sharpe": _study_number(run, books, name, "sharpe") for name in STUDY_BASELINES}
        row |= {"pbo": run.get("metrics.pbo")}
        row |= {c: run.get(f"metrics.{verdict_metric(c)}") for c in VERDICT_COLUMNS}
        rows.append(
            row | {"mcs": run.get("tags.verdict.mcs"), "run_id": run["run_id"], "start_time": run["start_time"]}
        )
    table = pd.DataFrame(rows, columns=list(STUDY_COLUMNS))
    return table.sort_values("start_time", ascending=False, kind="stable").reset_index(drop=True)


def _study_number(run: pd.Series, books: dict[str, tuple[str, str]], name: str, metric: str) -> float | None:
    """One of a study run's numbers for the book ``name`` stands for in its kind (None: the kind has no such book)."""
    return run.get(f"metrics.{study_metric(*books[name], metric)}") if name in books else None


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
ABLATION_COLUMNS = ("sharpe", "sharpe_ci_low", "sharpe_ci_high", "dsr", "hold_1_over_n_sharpe", "spa_p")


def ablation_table(table: pd.DataFrame) -> pd.DataFrame:
    """The regulariser ablation from a :func:`study_table`: the newest run of each ``ablate-<term>``
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
