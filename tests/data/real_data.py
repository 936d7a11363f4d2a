"""The shipped BTCUSDT bars and funding as canonical tables, read once per test session.

Built here from the CSVs (not through the download stage) so the data tests do not depend on it. The fixtures
are shared by every test of a session: a test that modifies a table copies it first. A test module registers a
fixture by importing ``fixture_<name>``; its tests then ask for ``<name>``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import pytest

from diffquant.config import FeatureConfig
from diffquant.data.aggregate import aggregate
from diffquant.data.contracts import validate_bars, validate_funding
from diffquant.data.features import build_features

BUNDLED = Path(__file__).resolve().parents[2] / "data_source" / "bundled"


@functools.cache
def _bars_5m() -> pd.DataFrame:
    raw = pd.read_csv(BUNDLED / "BTCUSDT_USDM_5m_2024-2025.csv.gz")
    return validate_bars(raw.drop(columns="date").rename(columns={"open_time_ms": "open_time"}), "bundled 5m bars")


@functools.cache
def _funding() -> pd.DataFrame:
    raw = pd.read_csv(BUNDLED / "BTCUSDT_USDM_funding_8h_2024-2025.csv")
    return validate_funding(raw.rename(columns={"funding_time_ms": "funding_time"}), "bundled funding")


@functools.cache
def _bars_30m() -> pd.DataFrame:
    return aggregate(_bars_5m(), 5, 30)[0]


@functools.cache
def _features_30m() -> pd.DataFrame:
    return build_features(_bars_30m(), _funding(), FeatureConfig(), 30)


@pytest.fixture(scope="session", name="bars_5m")
def fixture_bars_5m() -> pd.DataFrame:
    return _bars_5m()


@pytest.fixture(scope="session", name="funding")
def fixture_funding() -> pd.DataFrame:
    return _funding()


@pytest.fixture(scope="session", name="bars_30m")
def fixture_bars_30m() -> pd.DataFrame:
    return _bars_30m()


@pytest.fixture(scope="session", name="features_30m")
def fixture_features_30m() -> pd.DataFrame:
    """Default features (preset ohlcv + rolling_vol) of the shipped data at 30 minutes."""
    return _features_30m()
