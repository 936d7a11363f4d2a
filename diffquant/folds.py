"""The fold plan: ``folds:`` params -> typed walk-forward windows, the one list every stage from split on iterates.

A :class:`Fold` trains on ``train``, selects its checkpoint, thresholds and baseline settings on ``val`` and trades
``test``. Test windows tile (each starts where the previous ended), so the per-fold test tracks concatenate into
one continuous out-of-sample track. Schemes:

- ``single``: the ``split:`` protocol. One train and val window; the test and backtest quarters are two folds that
  share them (and so share their trained models).
- ``expanding``: every fold trains from ``folds.train_start`` up to its val window.
- ``rolling``: every fold trains on the ``folds.train_months`` before its val window.

The embargo drops ``folds.embargo_bars`` bars at the end of train and at the end of val, so no sample or val
decision sits right against the window that judges it.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass

from diffquant.config import FoldsConfig, SplitConfig, parse_date
from diffquant.data.contracts import MINUTE_MS
from diffquant.errors import ConfigError

Window = tuple[dt.datetime, dt.datetime]  # half-open [start, end), UTC
WINDOWS = ("train", "val", "test")


def add_months(day: dt.datetime, months: int) -> dt.datetime:
    index = day.year * 12 + day.month - 1 + months
    return day.replace(year=index // 12, month=index % 12 + 1)


def unix_ms(stamp: dt.datetime) -> int:
    return int(stamp.timestamp()) * 1000


@dataclass(frozen=True)
class Fold:
    """One walk-forward step; ``name`` is its test start (``YYYY-MM-DD``): stable when folds are appended."""

    name: str
    train: Window
    val: Window
    test: Window
    embargo_bars: int = 0

    def bounds_ms(self, timeframe_minutes: int) -> dict[str, tuple[int, int]]:
        """Unix-ms bounds of train, val and test with the embargo taken off the end of train and of val."""
        cut = self.embargo_bars * timeframe_minutes * MINUTE_MS
        return {
            "train": (unix_ms(self.train[0]), unix_ms(self.train[1]) - cut),
            "val": (unix_ms(self.val[0]), unix_ms(self.val[1]) - cut),
            "test": (unix_ms(self.test[0]), unix_ms(self.test[1])),
        }

    @classmethod
    def from_describe(cls, d: dict[str, str]) -> Fold:
        """The fold :meth:`describe` gave (the split stage's plan keeps it): windows are whole UTC days."""
        windows = [tuple(parse_date(d[f"{k}_{e}"], f"{k}_{e}") for e in ("start", "end")) for k in WINDOWS]
        return cls(d["name"], *windows, embargo_bars=int(d["embargo_bars"]))

    def describe(self) -> dict[str, str]:
        day = "%Y-%m-%d"
        return {
            "name": self.name,
            **{f"{k}_start": getattr(self, k)[0].strftime(day) for k in WINDOWS},
            **{f"{k}_end": getattr(self, k)[1].strftime(day) for k in WINDOWS},
            "embargo_bars": str(self.embargo_bars),
        }


def plan_folds(folds: FoldsConfig, split: SplitConfig) -> list[Fold]:
    """The folds of ``folds.scheme``, in test order; a plan whose tests do not tile is refused, naming the keys."""
    if folds.scheme == "single":
        b = split.boundaries()
        single = [Fold(f"{b[q][0]:%Y-%m-%d}", b["train"], b["val"], b[q]) for q in ("test", "backtest")]
        return [Fold(f.name, f.train, f.val, f.test, folds.embargo_bars) for f in single]
    first = parse_date(folds.first_test, "folds.first_test")
    last = parse_date(folds.last_test_end, "folds.last_test_end")
    starts = [first]
    while starts[-1] < last:
        starts.append(add_months(starts[-1], folds.test_months))
    if starts[-1] != last or len(starts) < 2:
        raise ConfigError(
            f"folds.first_test ({first:%Y-%m-%d}) .. folds.last_test_end ({last:%Y-%m-%d}) is not a whole number "
            f"of folds.test_months ({folds.test_months}): the test windows must tile it exactly"
        )
    train_start = parse_date(folds.train_start, "folds.train_start")
    plan = []
    for test_start, test_end in itertools.pairwise(starts):
        val_start = add_months(test_start, -folds.val_months)
        begin = train_start if folds.scheme == "expanding" else add_months(val_start, -folds.train_months)
        if begin >= val_start:
            raise ConfigError(
                f"fold {test_start:%Y-%m-%d}: folds.train_start ({begin:%Y-%m-%d}) is not before its val window "
                f"({val_start:%Y-%m-%d} = test start - folds.val_months); move folds.train_start earlier or "
                "folds.first_test later"
            )
        plan.append(Fold(f"{test_start:%Y-%m-%d}", (begin, val_start), (val_start, test_start), (test_start, test_end)))
    return [Fold(f.name, f.train, f.val, f.test, folds.embargo_bars) for f in plan]
