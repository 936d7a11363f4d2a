"""A portfolio fold's book paper-traded from raw bars over the fold's test window (its seeds, their val-book
hysteresis, the fold's execution) books, per asset and slot, the weight, trade and net return the fold booked."""

from __future__ import annotations

import pytest

from diffquant.deploy.book_paper import compare_book
from diffquant.deploy.fold_model import fold_book_record
from diffquant.deploy.paper_session import replay_book
from diffquant.io import write_parquet
from tests.study.test_book_study import first_run, raws  # noqa: F401 (fixtures: one trained portfolio fold)

pytestmark = pytest.mark.slow  # the fold trains a (tiny) portfolio and its single-asset policies


def test_paper_trading_a_portfolio_folds_book_books_what_the_fold_booked(raws, first_run, tmp_path) -> None:  # noqa: F811
    cfg, _, folder = first_run
    for symbol, raw in raws.items():  # the data stages' files of each asset
        write_parquet(raw.bars, tmp_path / "data_source" / "bars" / symbol / "bars.parquet")
        write_parquet(raw.funding, tmp_path / "data_source" / "raw" / symbol / "funding.parquet")
    books = replay_book(cfg, tmp_path, folder, str(tmp_path / "paper" / "ledger.db"))
    record = fold_book_record(folder)
    worst = compare_book(books, record)
    assert set(worst) == {f"{s}/{c}" for s in raws for c in ("position", "trade", "net")}
    assert max(worst.values()) < 1e-6, worst
    assert sorted(p.name for p in (tmp_path / "paper").iterdir()) == ["ledger_BTCUSDT.db", "ledger_ETHUSDT.db"]
    assert any((r["trade"] != 0).sum() > 2 for r in record.values())  # the book traded
