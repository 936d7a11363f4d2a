"""What a walk-forward fold hands to the study: its ``fold.json`` (the fold, its model groups, where their seeds are
and each entry judged on its test window) and each entry's per-bar returns (``returns/<name>.parquet``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from diffquant.errors import DataError
from diffquant.evaluate.entries import PORTFOLIO, AssetEntry, FoldEntry, PortfolioEntry, fold_entry
from diffquant.io import read_json, read_parquet

FOLD_JSON = "fold.json"
PRODUCER = "evaluate"
KEYS = ("name", "key", "fold", "groups", "models", "entries", "excluded")


@dataclass(frozen=True)
class FoldResult:
    """A fold's result: per entry (an asset, or the portfolio's book) its judged books and its per-bar returns."""

    name: str
    key: str
    fold: dict[str, str]
    groups: dict[str, list[str]]  # model group -> the assets it trained on
    models: dict[str, str]  # model group -> its policy seeds' folder, relative to the fold's folder
    entries: dict[str, FoldEntry]  # an asset's books, or the portfolio's
    excluded: dict[str, str]
    returns: dict[str, pd.DataFrame]  # entry -> time + one net-return column per book

    def asset_entries(self) -> dict[str, AssetEntry]:
        """Each asset's entry, of a single-asset study's fold; a ``DataError`` if the fold judged a portfolio."""
        assets = {n: e for n, e in self.entries.items() if isinstance(e, AssetEntry)}
        if len(assets) != len(self.entries):
            raise DataError(f"fold {self.name} judged a portfolio's book, not each asset; re-run the {PRODUCER} stage")
        return assets

    def book_entry(self) -> PortfolioEntry:
        """The portfolio's entry, of a portfolio study's fold; a ``DataError`` if the fold judged each asset."""
        entry = self.entries.get(PORTFOLIO)
        if not isinstance(entry, PortfolioEntry):
            raise DataError(
                f"fold {self.name} judged {sorted(self.entries)} one by one, not a book; re-run the {PRODUCER} stage"
            )
        return entry

    def to_dict(self) -> dict[str, Any]:
        """``fold.json``: everything but the returns."""
        return {
            "name": self.name,
            "key": self.key,
            "fold": dict(self.fold),
            "groups": {g: list(assets) for g, assets in self.groups.items()},
            "models": dict(self.models),
            "entries": {n: e.to_dict() for n, e in self.entries.items()},
            "excluded": dict(self.excluded),
        }

    @classmethod
    def from_dict(cls, raw: Any, returns: dict[str, pd.DataFrame]) -> FoldResult:
        """A ``to_dict`` record and its returns; a ``DataError`` naming the key that does not fit."""
        if not isinstance(raw, dict) or set(raw) != set(KEYS):
            found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise DataError(f"keys {found}, expected {list(KEYS)}")
        if not isinstance(raw["entries"], dict):
            raise DataError("key 'entries' is not an object")
        entries = {n: fold_entry(e, f"entries.{n}") for n, e in raw["entries"].items()}
        fields = {k: raw[k] for k in KEYS if k != "entries"}
        return cls(**fields, entries=entries, returns=returns)


def load_fold(out: Path) -> FoldResult:
    """A finished fold's result; ``DataError`` naming the file when it is missing, unreadable or of another layout."""
    raw = read_json(out / FOLD_JSON, PRODUCER)
    try:
        result = FoldResult.from_dict(raw, {})
    except DataError as exc:
        raise DataError(
            f"{out / FOLD_JSON}: not a fold result ({exc}); re-run the {PRODUCER} stage (dvc repro {PRODUCER})"
        ) from None
    returns = {s: read_parquet(out / "returns" / f"{s}.parquet", PRODUCER) for s in result.entries}
    return replace(result, returns=returns)
