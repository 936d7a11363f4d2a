"""The verdict across studies (compare's studies table): a researcher who runs many studies runs many searches.

- **SPA and StepM over the studies' headline books**, each against its own benchmark (buy-and-hold of the universe,
  or 1/N): the loss differential of a study is its headline's per-bar net return minus its benchmark's, on the bars
  every study shares (finer bars compounded to the coarsest timeframe). The tracks come back from MLflow: the study
  stage logs its headline track as an artifact of the study run (``compare.headline_artifact``).
- **Benjamini-Hochberg** (``statsmodels``) over the studies' own SPA p-values: the false-discovery-rate adjusted
  p-value of each, ``spa_p_bh``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from diffquant.evaluate.compare import STUDY_BOOKS
from diffquant.study.verdict import (
    NOT_COMPUTABLE,
    REPS,
    SPA_SIZE,
    NotComputable,
    Setting,
    check_returns,
    superior_ability,
)

Loader = Callable[[str, str], pd.DataFrame | None]  # (run id, kind) -> the study's headline track, None if not logged


def benjamini_hochberg(pvalues: pd.Series, alpha: float = SPA_SIZE) -> pd.Series:
    """BH-adjusted p-values at false-discovery rate ``alpha`` over the values present (NaN stays NaN)."""
    present = pvalues.dropna().astype(float)
    out = pd.Series(np.nan, index=pvalues.index, dtype=float)
    if len(present):
        out[present.index] = multipletests(present.to_numpy(), alpha=alpha, method="fdr_bh")[1]
    return out


def common_clock(books: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, int]:
    """Each study's per-bar net return of its headline book minus its benchmark's (``books``: label -> columns
    ``time``, ``book``, ``benchmark``), on one clock: bars compounded up to the coarsest timeframe among the studies,
    on the bars every study has; and that timeframe in minutes."""
    minutes = {k: int(b["time"].diff().dropna().median() / pd.Timedelta(minutes=1)) for k, b in books.items()}
    coarsest = max(minutes.values())
    diffs = {}
    for label, book in books.items():
        bucket = pd.to_datetime(book["time"], utc=True).dt.floor(f"{coarsest}min")
        grown = (1.0 + book[["book", "benchmark"]]).groupby(bucket.to_numpy()).prod() - 1.0
        diffs[label] = grown["book"] - grown["benchmark"]
    return pd.concat(diffs, axis=1, join="inner").sort_index(), coarsest


def across_studies(books: dict[str, pd.DataFrame], seed: int = 0, reps: int = REPS) -> dict[str, Any]:
    """SPA and StepM over studies: does any study's headline book beat its own benchmark in mean net return, on the
    bars they share, beyond the luck of running them all? ``books`` as :func:`common_clock`."""
    if len(books) < 2:
        return {"studies": list(books), NOT_COMPUTABLE: "fewer than two studies have their headline track logged"}
    diffs, minutes = common_clock(books)
    block = max(1, 24 * 60 // minutes)
    out: dict[str, Any] = {
        "studies": list(books),
        "bars": len(diffs),
        "timeframe_minutes": minutes,
        "block_bars": block,
    }
    try:
        check_returns(diffs, block)
        zero = pd.Series(0.0, index=diffs.index)
        out["spa"] = superior_ability(diffs, zero, Setting(block * 365, block, seed, reps=reps))
    except NotComputable as why:
        out[NOT_COMPUTABLE] = f"on the {len(diffs)} bars the studies share: {why}"
    return out


def judge_studies(table: pd.DataFrame, load: Loader, seed: int = 0) -> tuple[pd.DataFrame, dict[str, Any]]:
    """compare's studies table with ``spa_p_bh`` beside ``spa_p``, and SPA over the headline books of the studies
    whose track ``load`` finds (each labelled by run name and the start of its run id)."""
    table = table.copy()
    table.insert(table.columns.get_loc("spa_p") + 1, "spa_p_bh", benjamini_hochberg(table["spa_p"]))
    books = {}
    for row in table.itertuples(index=False):
        track = load(row.run_id, row.kind)
        if track is not None:
            book, benchmark = STUDY_BOOKS[row.kind]["policy"][1], STUDY_BOOKS[row.kind]["hold_1_over_n"][1]
            frame = pd.DataFrame({"time": track["time"], "book": track[book], "benchmark": track[benchmark]})
            books[f"{row.run}#{str(row.run_id)[:6]}"] = frame
    return table, across_studies(books, seed)


def _names(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names) if names else "none"


def across_markdown(result: dict[str, Any]) -> str:
    """compare's section on SPA over the studies' headline books."""
    lines = ["## Across studies: SPA over the headline books, each against its own benchmark", ""]
    if NOT_COMPUTABLE in result:
        listed = f" ({_names(result['studies'])})" if result["studies"] else ""
        return "\n".join([*lines, f"Not computable{listed}: {result[NOT_COMPUTABLE]}.", ""])
    spa = result["spa"]
    beats = "At least one" if spa["consistent"] < SPA_SIZE else "None"
    lines += [
        f"{beats} of the {len(result['studies'])} studies' headline books beats its benchmark in mean net return "
        f"beyond the luck of running them all: SPA p = {spa['consistent']:.3f} (lower {spa['lower']:.3f}, upper "
        f"{spa['upper']:.3f}; Reality Check {spa['reality_check']:.3f}); StepM names {_names(spa['stepm'])}. On the "
        f"{result['bars']} bars of {result['timeframe_minutes']} minutes they share (finer bars compounded), "
        f"stationary bootstrap, mean block {result['block_bars']} bars. `spa_p_bh`: each study's own SPA p-value, "
        "Benjamini-Hochberg adjusted over the studies in the table (false-discovery rate).",
        "",
    ]
    return "\n".join(lines)
