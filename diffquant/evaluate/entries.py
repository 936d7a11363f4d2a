"""What judging hands on, defined once: a book's entry, a seed group's, a series' books (``QuarterEntry``), and a
walk-forward fold's entry (one asset's books, or the portfolio's one book, with the choices made on val).

``to_dict`` writes the JSON each fold's ``fold.json`` keeps, key for key and in the same order; ``from_dict`` reads
it back and refuses anything else with a ``DataError`` naming the key (the caller that read the file adds its
name). Metrics stay a name -> number mapping: ``compute_metrics`` owns their names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from diffquant.errors import DataError
from diffquant.evaluate.tuned import TunedModel, TunedThresholds

T = TypeVar("T")

Metrics = dict[str, float]  # a book's metrics under ``compute_metrics``' names
Spread = dict[str, dict[str, float]]  # metric -> its distribution over seeds (``stats.distribution``)

# a portfolio fold's books: the portfolio and the baselines it is judged against, each a column of its returns
PORTFOLIO = "portfolio"  # the book's name: its model group, its track and its entry in a fold's result
SINGLE_AVERAGE = "single_average"
BASELINES = (
    *("equal_weight", "inverse_vol", "xs_momentum", SINGLE_AVERAGE),
    *("equal_weight_vt", "carry", "funding_extremes"),  # the cost-aware baselines (docs/execution.md)
)
BOOKS = (PORTFOLIO, *BASELINES)


def _key(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


def _object(value: Any, at: str, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``value`` as a JSON object; with ``keys``, refused if it holds any other (reading it would drop them)."""
    if not isinstance(value, dict):
        raise DataError(f"key {at or '(top level)'!r} is {type(value).__name__}, not an object")
    extra = [k for k in value if keys is not None and k not in keys]
    if extra:
        raise DataError(f"key {_key(at, extra[0])!r} is not part of this layout (expected {', '.join(keys or ())})")
    return value


def _get(d: dict[str, Any], key: str, at: str) -> Any:
    if key not in d:
        raise DataError(f"key {_key(at, key)!r} is missing")
    return d[key]


def _read(d: dict[str, Any], key: str, at: str, read: Callable[[Any, str], T]) -> T:
    """``d[key]`` through ``read(value, its key)``."""
    return read(_get(d, key, at), _key(at, key))


def _metrics(value: Any, at: str) -> Metrics:
    return dict(_object(value, at))


def _shaped(keys: tuple[str, ...]) -> Callable[[Any, str], dict[str, Any]]:
    """A reader of an object with no keys but ``keys``."""
    return lambda value, at: _object(value, at, keys)


def _each(read: Callable[[Any, str], T]) -> Callable[[Any, str], dict[str, T]]:
    """A reader of an object whose every value ``read`` reads (seeds, assets, cost levels)."""
    return lambda value, at: {k: read(v, _key(at, k)) for k, v in _object(value, at).items()}


@dataclass(frozen=True)
class Significance:
    """``stats.significance``: PSR, DSR and the 95% bootstrap intervals of the Sharpe and of its excess over the
    benchmark book (PSR and DSR are None for a series without variation)."""

    psr: float | None
    dsr: float | None
    sharpe_ci_low: float
    sharpe_ci_high: float
    sharpe_minus_benchmark_ci_low: float
    sharpe_minus_benchmark_ci_high: float

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Any, at: str = "") -> Significance:
        names = tuple(f.name for f in fields(cls))
        d = _object(value, at, names)
        return cls(**{n: _get(d, n, at) for n in names})


@dataclass(frozen=True)
class CostSweep:
    """``Scorer.cost_sweep``: Sharpe and return at each cost multiple (``"2x"``), and the break-even cost."""

    levels: dict[str, Metrics]
    break_even_multiple: float | None
    break_even_bps: float | None  # None: the book never trades

    def to_dict(self) -> dict[str, Any]:
        return {
            "levels": {k: dict(v) for k, v in self.levels.items()},
            "break_even_multiple": self.break_even_multiple,
            "break_even_bps": self.break_even_bps,
        }

    @classmethod
    def from_dict(cls, value: Any, at: str = "") -> CostSweep:
        d = _object(value, at, ("levels", "break_even_multiple", "break_even_bps"))
        levels = _read(d, "levels", at, _each(_metrics))
        return cls(levels, _get(d, "break_even_multiple", at), _get(d, "break_even_bps", at))


@dataclass(frozen=True)
class BookEntry:
    """One judged book: its metrics, significance and cost sweep."""

    metrics: Metrics
    significance: Significance
    costs: CostSweep

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": dict(self.metrics),
            "significance": self.significance.to_dict(),
            "costs": self.costs.to_dict(),
        }

    @classmethod
    def from_dict(cls, value: Any, at: str = "") -> BookEntry:
        d = _object(value, at, ("metrics", "significance", "costs"))
        return cls(
            _read(d, "metrics", at, _metrics),
            _read(d, "significance", at, Significance.from_dict),
            _read(d, "costs", at, CostSweep.from_dict),
        )


@dataclass(frozen=True)
class GroupEntry:
    """A model kind's seeds: each seed's book (``report.SEED_METRICS`` of its metrics), the spread over the seeds of
    their Sharpe, return and break-even cost, and the ensemble's book."""

    seeds: dict[str, BookEntry]
    distribution: Spread
    ensemble: BookEntry

    def to_dict(self) -> dict[str, Any]:
        return {
            "seeds": {s: e.to_dict() for s, e in self.seeds.items()},
            "distribution": {k: dict(v) for k, v in self.distribution.items()},
            "ensemble": self.ensemble.to_dict(),
        }

    @classmethod
    def from_dict(cls, value: Any, at: str = "") -> GroupEntry:
        d = _object(value, at, ("seeds", "distribution", "ensemble"))
        return cls(
            _read(d, "seeds", at, _each(BookEntry.from_dict)),
            _read(d, "distribution", at, _each(_metrics)),
            _read(d, "ensemble", at, BookEntry.from_dict),
        )


QUARTER_KEYS = ("policy", "proxy", "momentum", "buy_and_hold", "flat")


@dataclass(frozen=True)
class QuarterEntry:
    """Every book of one series (an asset's test window in a fold, ``report.score_quarter``): the policy's seed
    group, the MSE proxy's when it was trained, momentum, and the metrics of buy-and-hold and of flat."""

    policy: GroupEntry
    proxy: GroupEntry | None
    momentum: BookEntry
    buy_and_hold: Metrics
    flat: Metrics

    def to_dict(self) -> dict[str, Any]:
        groups = {"policy": self.policy.to_dict()}
        if self.proxy is not None:
            groups["proxy"] = self.proxy.to_dict()
        return {
            **groups,
            "momentum": self.momentum.to_dict(),
            "buy_and_hold": dict(self.buy_and_hold),
            "flat": dict(self.flat),
        }

    @staticmethod
    def _fields(d: dict[str, Any], at: str) -> dict[str, Any]:
        """The quarter's fields of an object that may hold more (a fold's entry)."""
        return {
            "policy": _read(d, "policy", at, GroupEntry.from_dict),
            "proxy": _read(d, "proxy", at, GroupEntry.from_dict) if "proxy" in d else None,
            "momentum": _read(d, "momentum", at, BookEntry.from_dict),
            "buy_and_hold": _read(d, "buy_and_hold", at, _metrics),
            "flat": _read(d, "flat", at, _metrics),
        }

    @classmethod
    def from_dict(cls, value: Any, at: str = "") -> QuarterEntry:
        return cls(**cls._fields(_object(value, at, QUARTER_KEYS), at))


@dataclass(frozen=True)
class AssetEntry(QuarterEntry):
    """One asset's entry in a single-asset fold: its test window's books, the choices made on its val window (every
    seed's hysteresis, the momentum lookback) and the trials its DSR counts."""

    tuned: TunedThresholds
    trials: dict[str, float]  # <kind>_n and <kind>_null_sharpe_annual (``report.Trials.summary``)

    @classmethod
    def of(cls, quarter: QuarterEntry, tuned: TunedThresholds, trials: dict[str, float]) -> AssetEntry:
        return cls(**{f.name: getattr(quarter, f.name) for f in fields(QuarterEntry)}, tuned=tuned, trials=trials)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "tuned": self.tuned.to_dict(), "trials": dict(self.trials)}

    @classmethod
    def from_dict(cls, value: Any, at: str = "") -> AssetEntry:
        d = _object(value, at, (*QUARTER_KEYS, "tuned", "trials"))
        tuned = _read(d, "tuned", at, TunedThresholds.from_dict)
        return cls(**cls._fields(d, at), tuned=tuned, trials=_read(d, "trials", at, _metrics))


@dataclass(frozen=True)
class BookChoices:
    """What a portfolio fold chooses on its val window (threshold-opt): each seed's book hysteresis (one set for every
    asset, ``search_book``) and, for the single-asset average, each asset's seeds' hysteresis on that asset's val."""

    portfolio: dict[str, TunedModel]  # seed -> its book's thresholds
    singles: dict[str, dict[str, TunedModel]]  # asset -> seed -> its single-asset policy's thresholds

    def to_dict(self) -> dict[str, Any]:
        return {
            PORTFOLIO: {s: t.to_dict() for s, t in self.portfolio.items()},
            SINGLE_AVERAGE: {a: {s: t.to_dict() for s, t in by_seed.items()} for a, by_seed in self.singles.items()},
        }

    @classmethod
    def from_dict(cls, value: Any, at: str = "") -> BookChoices:
        d = _object(value, at, (PORTFOLIO, SINGLE_AVERAGE))
        return cls(
            _read(d, PORTFOLIO, at, _each(TunedModel.from_dict)),
            _read(d, SINGLE_AVERAGE, at, _each(_each(TunedModel.from_dict))),
        )


@dataclass(frozen=True)
class PortfolioEntry:
    """A portfolio fold's entry: the metrics of its seed ensemble, of each seed and of each baseline book on the
    test window, the trials its DSR counts, the choices made on val and each asset's part in the ensemble's book."""

    ensemble: Metrics
    seeds: dict[str, Metrics]
    baselines: dict[str, Metrics]  # BASELINES, in that order
    trials: dict[str, float]  # portfolio_n
    tuned: BookChoices
    assets: dict[str, Metrics]  # asset -> contribution_pct, turnover, mean_abs_weight

    def to_dict(self) -> dict[str, Any]:
        return {
            PORTFOLIO: {
                "ensemble": {"metrics": dict(self.ensemble)},
                "seeds": {s: dict(m) for s, m in self.seeds.items()},
            },
            **{b: {"metrics": dict(m)} for b, m in self.baselines.items()},
            "trials": dict(self.trials),
            "tuned": self.tuned.to_dict(),
            "assets": {a: dict(v) for a, v in self.assets.items()},
        }

    @classmethod
    def from_dict(cls, value: Any, at: str = "") -> PortfolioEntry:
        d = _object(value, at, (*BOOKS, "trials", "tuned", "assets"))
        book = _read(d, PORTFOLIO, at, _shaped(("ensemble", "seeds")))
        at_book = _key(at, PORTFOLIO)
        return cls(
            ensemble=_read(book, "ensemble", at_book, _book_metrics),
            seeds=_read(book, "seeds", at_book, _each(_metrics)),
            baselines={b: _read(d, b, at, _book_metrics) for b in BASELINES},
            trials=_read(d, "trials", at, _metrics),
            tuned=_read(d, "tuned", at, BookChoices.from_dict),
            assets=_read(d, "assets", at, _each(_metrics)),
        )


def _book_metrics(value: Any, at: str) -> Metrics:
    """The metrics of a book a portfolio fold keeps nothing else of: ``{"metrics": {...}}``."""
    return _read(_object(value, at, ("metrics",)), "metrics", at, _metrics)


FoldEntry = AssetEntry | PortfolioEntry


def fold_entry(value: Any, at: str = "") -> FoldEntry:
    """A fold's entry as it was written: the portfolio's (it holds the ``portfolio`` book) or an asset's."""
    return (PortfolioEntry if PORTFOLIO in _object(value, at) else AssetEntry).from_dict(value, at)
