"""MLflow metric names of a study, spelled once: evaluate logs under them, compare and the tests read them."""

from __future__ import annotations


def study_metric(track: str, book: str, metric: str) -> str:
    """A study's number on its parent run: ``universe/policy/sharpe`` (a single-asset study's universe
    book, or ``BTCUSDT/...`` one asset's track), ``portfolio/equal_weight/dsr`` (a portfolio study's baseline)."""
    return f"{track}/{book}/{metric}"


def verdict_metric(key: str) -> str:
    """The study's verdict over its whole search on its parent run: ``verdict/spa_p``, ``verdict/mde_sharpe`` ...
    (``diffquant.study.verdict.verdict_metrics`` logs them, compare's studies table reads them)."""
    return f"verdict/{key}"
