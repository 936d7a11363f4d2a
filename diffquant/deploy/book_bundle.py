"""A portfolio bundle: the raw bars of every asset in, the book's weights out, as a portfolio fold trades them.

Per asset its bars -> ``feature_series`` (the single-asset bundle's features); the assets on one clock
(``BookSeries``); each member (a seed's ``PortfolioPolicy``) decides for every slot with the engine's batched path
(``book_decisions``), its hysteresis per asset and the leverage cap (``executed_book``); the book holds the members'
mean, as the fold's ensemble does. Bars of each asset from ``warmup`` before the first bar of a fold's test series
give the fold's weights bit for bit.

A portfolio decides every slot from the flat state at the first one: there is no bar-by-bar continuation here, so
the paper trader does not take a portfolio (docs/paper_trading.md, limits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from diffquant.config import FeatureConfig, SimConfig
from diffquant.data.contracts import to_ms
from diffquant.deploy.bundle import BundleParts, checked_bars, feature_series, read_bundle
from diffquant.errors import DataError
from diffquant.evaluate.book import BookSeries, book_decisions, executed_book
from diffquant.evaluate.member import Member
from diffquant.float_mode import denormals_flushed

MANIFEST = "book.json"
SYMBOL = "symbol"  # the input's column naming each row's asset


@dataclass(frozen=True)
class BookBundle(BundleParts):
    members: tuple[Member, ...]  # each a PortfolioPolicy with the hysteresis tuned on the fold's val book
    symbols: tuple[str, ...]  # the assets the book trades, in the policy's order
    features: FeatureConfig
    timeframe_minutes: int
    sim: SimConfig
    manifest_file = MANIFEST

    def decide(self, bars: pd.DataFrame) -> pd.DataFrame:
        """The book at the close of every slot from the first at which some asset has a full context: ``open_time``
        (Unix ms), ``weight_<SYMBOL>`` (the members' mean executed weight, 0 where the asset is absent) and
        ``raw_<SYMBOL>`` (their mean raw weight, NaN where absent). ``bars``: each asset's canonical bars, oldest
        first, one ``symbol`` column naming them; every asset of the book, at least ``min_bars`` rows each."""
        book = self.book_series(bars)
        leverage = self.members[0].policy.leverage
        raw, executed = [], []
        for member in self.members:
            with denormals_flushed():  # the mode the fold judged in
                decisions = book_decisions(member.policy, book)
            raw.append(decisions.raw)
            executed.append(executed_book(decisions, member.hysteresis, leverage))
        first = int(np.flatnonzero(np.isfinite(raw[0]).any(axis=1))[0])
        mean_raw, weights = np.mean(raw, axis=0)[first:], np.mean(executed, axis=0)[first:]
        out = {"open_time": book.open_time[first:]}
        out |= {f"weight_{s}": weights[:, a] for a, s in enumerate(self.symbols)}
        out |= {f"raw_{s}": mean_raw[:, a] for a, s in enumerate(self.symbols)}
        return pd.DataFrame(out)

    def book_series(self, bars: pd.DataFrame) -> BookSeries:
        """Each asset's feature series on one clock; refuses a table without a ``symbol`` column or an asset."""
        if SYMBOL not in bars.columns:
            raise DataError(f"portfolio input bars: no {SYMBOL!r} column; give every asset's bars, one per row")
        missing = sorted(set(self.symbols) - set(bars[SYMBOL]))
        if missing:
            raise DataError(f"portfolio input bars: no bars of {missing}; this book trades {list(self.symbols)}")
        n_features = self.members[0].policy.n_features
        series = []
        for symbol in self.symbols:
            where = f"portfolio input bars of {symbol}"
            own = bars[bars[SYMBOL] == symbol].drop(columns=[SYMBOL]).reset_index(drop=True)
            checked = checked_bars(own, self.features, self.timeframe_minutes, self.context, where)
            series.append(feature_series(own, checked, self.features, self.timeframe_minutes, n_features, where))
        return BookSeries.of(series, self.symbols)

    def manifest(self) -> dict[str, object]:
        return {**super().manifest(), "symbols": list(self.symbols)}

    @classmethod
    def load(cls, folder: Path) -> BookBundle:
        manifest, members, settings = read_bundle(folder, MANIFEST, "an MLflow portfolio model (evaluate stage)")
        return cls(members=members, symbols=tuple(manifest["symbols"]), **settings)


def as_book_input(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Each asset's input table (its bars and the columns its features read) -> the portfolio model's input: one
    table, ``symbol`` first, open_time in Unix ms."""
    parts = [t.assign(**{SYMBOL: s}) for s, t in tables.items()]
    table = pd.concat(parts, ignore_index=True)
    if not pd.api.types.is_integer_dtype(table["open_time"]):
        table["open_time"] = to_ms(table["open_time"])
    return table[[SYMBOL, *[c for c in table.columns if c != SYMBOL]]]
