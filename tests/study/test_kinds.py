"""The study kinds: what ``model.kind`` changes in a study is asked of one object, and each kind answers as the
branches it replaced did (the end-to-end fold tests run both kinds through it)."""

from __future__ import annotations

import pytest

from diffquant.errors import DataError
from diffquant.evaluate.entries import PORTFOLIO
from diffquant.folds import plan_folds
from diffquant.study.fold_data import fold_data
from diffquant.study.fold_models import fold_groups
from diffquant.study.kinds import Portfolio, SingleAsset, study_kind
from tests.study.test_book_study import portfolio
from tests.study.test_fold_run import raw_until, tables, tiny

ASSETS = ["BTCUSDT", "ETHUSDT"]


def test_a_single_asset_study_trains_its_groups_policy_and_proxy() -> None:
    kind = study_kind(tiny())
    assert isinstance(kind, SingleAsset) and kind.model_groups(ASSETS) == {"pooled": ASSETS}
    assert kind.group_config("pooled") is kind.cfg and kind.trains() == ["policy", "proxy"]
    per_asset = study_kind(tiny(**{"train.universe": "per_asset"}))
    assert per_asset.model_groups(ASSETS) == {a: [a] for a in ASSETS}
    assert study_kind(tiny(**{"baselines.proxy": False})).trains() == ["policy"]


def test_a_portfolio_study_trains_its_book_beside_the_single_asset_policies() -> None:
    kind = study_kind(portfolio(**{"baselines.proxy": True}))
    assert isinstance(kind, Portfolio) and kind.trains() == ["policy"]  # no MSE proxy beside a book
    assert kind.model_groups(ASSETS) == {PORTFOLIO: ASSETS, "pooled": ASSETS}
    assert kind.group_config(PORTFOLIO) is kind.cfg
    single = kind.group_config("pooled")  # the single-asset average's policies: single-asset, no proxy
    assert single.model.kind == "single" and not single.baselines.proxy
    assert study_kind(single).trains() == ["policy"]
    per_asset = study_kind(portfolio(**{"train.universe": "per_asset"}))
    assert per_asset.model_groups(ASSETS) == {PORTFOLIO: ASSETS, **{a: [a] for a in ASSETS}}


def test_a_fold_s_groups_are_its_kind_s() -> None:
    """``fold_models.fold_groups`` builds a fold's groups from its kind: names, assets and each group's config."""
    raws = {s: raw_until(s, "2024-05-02") for s in ASSETS}
    cfg = portfolio()
    data = fold_data(plan_folds(cfg.folds, cfg.split)[0], tables(cfg, raws), cfg)
    groups = fold_groups(cfg, data)
    assert [(g.name, g.symbols) for g in groups] == [(PORTFOLIO, tuple(ASSETS)), ("pooled", tuple(ASSETS))]
    assert groups[0].cfg is cfg and groups[1].cfg.model.kind == "single"


def test_choices_of_the_other_kind_are_refused(tmp_path) -> None:
    (tmp_path / "BTCUSDT.json").write_text("{}")
    with pytest.raises(DataError, match=r"portfolio\.json"):
        study_kind(portfolio()).read_choices(tmp_path, None)  # type: ignore[arg-type]
