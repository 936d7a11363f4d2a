"""The fold plan: schemes, tiling, embargo and the errors that name the key."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools

import pytest

from diffquant.config import FoldsConfig, SplitConfig
from diffquant.errors import ConfigError
from diffquant.folds import add_months, plan_folds, unix_ms


def day(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.UTC)


def test_single_is_the_split_protocol_with_test_and_backtest_as_two_folds() -> None:
    split = SplitConfig()
    test, backtest = plan_folds(FoldsConfig(scheme="single"), split)
    b = split.boundaries()
    assert (test.train, test.val, test.test) == (b["train"], b["val"], b["test"])
    assert (backtest.train, backtest.val, backtest.test) == (b["train"], b["val"], b["backtest"])
    assert [test.name, backtest.name] == ["2025-07-01", "2025-10-01"]


@pytest.mark.parametrize("scheme", ["expanding", "rolling"])
def test_tests_tile_and_every_window_precedes_its_test(scheme: str) -> None:
    cfg = FoldsConfig(scheme=scheme, train_start="2023-01-01", first_test="2024-07-01", last_test_end="2026-01-01")
    plan = plan_folds(cfg, SplitConfig())
    assert len(plan) == 6
    assert plan[0].test[0] == day("2024-07-01") and plan[-1].test[1] == day("2026-01-01")
    for before, after in itertools.pairwise(plan):
        assert before.test[1] == after.test[0]  # no hole, no overlap: one continuous track
    for fold in plan:
        assert fold.train[1] == fold.val[0] and fold.val[1] == fold.test[0]
        assert fold.val[0] == add_months(fold.test[0], -3)
        if scheme == "expanding":
            assert fold.train[0] == day("2023-01-01")
        else:
            assert fold.train[0] == add_months(fold.val[0], -12)


def test_appending_a_fold_leaves_the_earlier_folds_unchanged() -> None:
    cfg = FoldsConfig(scheme="expanding", first_test="2024-07-01", last_test_end="2025-07-01")
    longer = dataclasses.replace(cfg, last_test_end="2025-10-01")
    assert plan_folds(longer, SplitConfig())[:-1] == plan_folds(cfg, SplitConfig())


def test_embargo_cuts_the_end_of_train_and_of_val() -> None:
    cfg = FoldsConfig(scheme="expanding", first_test="2024-07-01", last_test_end="2024-10-01", embargo_bars=5)
    (fold,) = plan_folds(cfg, SplitConfig())
    bounds = fold.bounds_ms(60)
    hour = 3_600_000
    assert bounds["train"][1] == unix_ms(fold.val[0]) - 5 * hour
    assert bounds["val"][1] == unix_ms(fold.test[0]) - 5 * hour
    assert bounds["test"] == (unix_ms(fold.test[0]), unix_ms(fold.test[1]))


def test_tests_that_do_not_tile_the_span_are_refused() -> None:
    cfg = FoldsConfig(scheme="expanding", first_test="2024-07-01", last_test_end="2025-08-01")
    with pytest.raises(ConfigError, match=r"folds\.first_test .* folds\.last_test_end .* folds\.test_months"):
        plan_folds(cfg, SplitConfig())


def test_a_train_window_that_would_start_after_its_val_is_refused() -> None:
    cfg = FoldsConfig(scheme="expanding", train_start="2024-06-01", first_test="2024-07-01", last_test_end="2024-10-01")
    with pytest.raises(ConfigError, match=r"fold 2024-07-01: folds\.train_start"):
        plan_folds(cfg, SplitConfig())


def test_a_bad_date_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"folds\.first_test: '2024/07/01' is not a date"):
        plan_folds(FoldsConfig(scheme="rolling", first_test="2024/07/01"), SplitConfig())
