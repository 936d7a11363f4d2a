"""MLflow metric names of the evaluation, spelled once: evaluate and the study stage log under them, compare and the
tests read them."""

from __future__ import annotations

SPLITS = ("val", "test", "backtest")
# A seed's run already has the per-epoch training curve "val_sharpe": the tuned val results go under "tuned_val".
PREFIX = {"val": "tuned_val", "test": "test", "backtest": "backtest"}


def metric_name(split: str, metric: str, book: str = "policy") -> str:
    """``test_sharpe`` (the policy ensemble, or a seed's own run), ``test_proxy_sharpe``, ``test_momentum_sharpe``,
    ``tuned_val_buy_and_hold_sharpe``; ``metric`` may carry a suffix such as ``sharpe_seed_median``."""
    book_part = "" if book == "policy" else f"{book}_"
    return f"{PREFIX[split]}_{book_part}{metric}"


def study_metric(track: str, book: str, metric: str) -> str:
    """A walk-forward study's number on its parent run: ``universe/policy/sharpe`` (a single-asset study's universe
    book, or ``BTCUSDT/...`` one asset's track), ``portfolio/equal_weight/dsr`` (a portfolio study's baseline)."""
    return f"{track}/{book}/{metric}"


def verdict_metric(key: str) -> str:
    """The study's verdict over its whole search on its parent run: ``verdict/spa_p``, ``verdict/mde_sharpe`` ...
    (``diffquant.study.verdict.verdict_metrics`` logs them, compare's studies table reads them)."""
    return f"verdict/{key}"
