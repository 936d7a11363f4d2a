"""The shipped universe, its named symbol sets, mark-price bars, ``data.start`` and the multi-symbol sources.

The default experiment (bundled BTCUSDT at 30 minutes from 2024-01-01) must see exactly the bars and funding of the
two files it was built on, although the folder now also ships 2023 and a longer funding history.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffquant.config import SYMBOL_SETS, DataConfig, from_dict
from diffquant.data.sources import bundled, load_bundled, load_source, load_universe
from diffquant.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "data_source" / "bundled"
MIN = 60_000
# symbol: (bars at 60 min, first bar, funding events), as data_source/README.md lists them; all end in 2025-12-31
AT_60 = {
    "ADAUSDT": (51_880, "2020-01-31 08:00", 6_485),
    "ARBUSDT": (17_544, "2024-01-01 00:00", 2_193),
    "AVAXUSDT": (17_544, "2024-01-01 00:00", 2_193),
    "BCHUSDT": (52_912, "2019-12-19 08:00", 0),  # bars only: its funding history is incomplete, not shipped
    "BNBUSDT": (17_544, "2024-01-01 00:00", 2_193),
    "BTCUSDT": (55_351, "2019-09-08 17:00", 6_914),
    "DOGEUSDT": (17_544, "2024-01-01 00:00", 2_193),
    "DOTUSDT": (17_544, "2024-01-01 00:00", 2_193),
    "ETHUSDT": (53_441, "2019-11-27 07:00", 6_680),
    "LINKUSDT": (17_544, "2024-01-01 00:00", 2_193),
    "LTCUSDT": (52_408, "2020-01-09 08:00", 6_551),
    "SOLUSDT": (210_528, "2024-01-01 00:00", 2_193),  # shipped at 5 minutes only
    "XRPUSDT": (52_480, "2020-01-06 08:00", 6_560),
}
MARK = ("ADAUSDT", "BTCUSDT", "ETHUSDT", "LTCUSDT", "SOLUSDT", "XRPUSDT")  # 1-hour mark-price bars, 2024-2025


def data_cfg(**data: object) -> DataConfig:
    return from_dict({"data": data}).data


def utc(stamp: str) -> pd.Timestamp:
    return pd.Timestamp(stamp, tz="UTC")


def frame_ms(stamps: pd.Series) -> np.ndarray:
    return stamps.to_numpy(dtype="datetime64[ms]").astype(np.int64)


def read_bars(name: str) -> pd.DataFrame:
    """A shipped bar file as the canonical table, read with plain pandas (no loader code involved)."""
    raw = pd.read_csv(BUNDLED / name)
    stamps = pd.to_datetime(raw["open_time_ms"], unit="ms", utc=True).astype("datetime64[ms, UTC]")
    values = {c: raw[c].astype(np.float64) for c in ("open", "high", "low", "close", "volume")}
    return pd.DataFrame({"open_time": stamps, **values})


def read_funding(name: str) -> pd.DataFrame:
    raw = pd.read_csv(BUNDLED / name)
    stamps = pd.to_datetime(raw["funding_time_ms"], unit="ms", utc=True).astype("datetime64[ms, UTC]")
    return pd.DataFrame({"funding_time": stamps, "funding_rate": raw["funding_rate"].astype(np.float64)})


# --- the shipped files -----------------------------------------------------------------------------------------------


def test_the_registry_lists_every_shipped_file_with_its_sha256() -> None:
    assert sorted(f.name for f in bundled.SHIPPED) == sorted(p.name for p in BUNDLED.iterdir())
    for f in bundled.SHIPPED:
        assert hashlib.sha256((BUNDLED / f.name).read_bytes()).hexdigest() == f.sha256, f.name
    assert tuple(AT_60) == bundled.SYMBOLS


def test_the_default_experiment_sees_exactly_the_files_it_was_built_on() -> None:
    cfg = data_cfg(source="bundled", symbol="BTCUSDT", timeframe_minutes=30, start="2024-01-01")
    raw = load_source(cfg, REPO)
    pd.testing.assert_frame_equal(raw.bars, read_bars("BTCUSDT_USDM_5m_2024-2025.csv.gz"), check_exact=True)
    pd.testing.assert_frame_equal(raw.funding, read_funding("BTCUSDT_USDM_funding_8h_2024-2025.csv"), check_exact=True)
    assert raw.meta["source_minutes"] == 5 and raw.meta["start"] == "2024-01-01"


def test_the_long_btc_funding_holds_the_2024_2025_file_unchanged() -> None:
    long = read_funding("BTCUSDT_USDM_funding_8h_2019-2025.csv")
    inside = (long["funding_time"] >= utc("2024-01-01")) & (long["funding_time"] < utc("2026-01-01"))
    short = read_funding("BTCUSDT_USDM_funding_8h_2024-2025.csv")
    pd.testing.assert_frame_equal(long[inside].reset_index(drop=True), short, check_exact=True)
    # Byte for byte too: the short file's rows are one contiguous run of the long file's lines.
    rows = (BUNDLED / "BTCUSDT_USDM_funding_8h_2024-2025.csv").read_text().split("\n", 1)[1]
    assert rows in (BUNDLED / "BTCUSDT_USDM_funding_8h_2019-2025.csv").read_text()


@pytest.mark.parametrize("symbol", AT_60)
def test_every_shipped_symbol_loads_at_one_hour(symbol: str) -> None:
    raw = load_bundled(BUNDLED, symbol, 60)
    rows, first, events = AT_60[symbol]
    step = 5 if symbol == "SOLUSDT" else 60
    assert (len(raw.bars), len(raw.funding)) == (rows, events)
    assert raw.bars["open_time"].iloc[0] == utc(first)
    assert raw.bars["open_time"].iloc[-1] == utc("2025-12-31 23:00") + pd.Timedelta(minutes=60 - step)
    assert np.all(np.diff(frame_ms(raw.bars["open_time"])) == step * MIN)  # every file is complete
    assert raw.meta["source_minutes"] == step and raw.meta["symbol"] == symbol
    funded = events > 0
    assert raw.meta["funding_available"] is funded and len(raw.meta["inputs"]) == 1 + funded  # bars (+ funding)
    assert raw.mark is None and "mark_minutes" not in raw.meta  # mark-price bars only when asked for


# --- the named symbol sets (config.SYMBOL_SETS), checked against the shipped files -------------------------------


def covers(symbol: str, first: str, kinds: tuple[str, ...]) -> bool:
    """Whether ``symbol`` ships every kind (bars at 1 h or finer, funding, mark) over ``first`` .. 2025 in full."""
    files = [f for f in bundled.SHIPPED if f.symbol == symbol]
    for kind in kinds:
        own = [f for f in files if f.kind == kind and (f.minutes is None or 60 % f.minutes == 0)]
        if not any(f.years[0] <= int(first[:4]) and f.years[1] == 2025 for f in own):
            return False
    return True


def test_the_universe_set_is_every_asset_with_complete_funded_2024_2025_bars() -> None:
    expected = {s for s in bundled.SYMBOLS if covers(s, "2024", ("bars", "funding"))}
    assert set(SYMBOL_SETS["universe"]) == expected and len(SYMBOL_SETS["universe"]) == 12
    assert "BCHUSDT" not in expected  # shipped for its long bar history, without funding
    for symbol in SYMBOL_SETS["universe"]:  # complete: the row count of two full years at one hour
        raw = load_source(data_cfg(symbol=symbol, timeframe_minutes=60), REPO)
        n = 17_544 * (12 if symbol == "SOLUSDT" else 1)
        assert len(raw.bars) == n and len(raw.funding) == 2_193, symbol


def test_the_history_and_mark_sets_match_the_shipped_files() -> None:
    history = {s for s in bundled.SYMBOLS if covers(s, "2020", ("bars", "funding"))}
    assert set(SYMBOL_SETS["history"]) == history
    assert set(SYMBOL_SETS["mark"]) == set(bundled.MARK_SYMBOLS) == set(MARK)


def test_a_set_name_stands_for_its_assets_in_data_symbols() -> None:
    cfg = data_cfg(symbols=["mark", "DOGEUSDT"])
    assert cfg.universe == [*SYMBOL_SETS["mark"], "DOGEUSDT"]
    with pytest.raises(ConfigError, match="distinct"):
        data_cfg(symbols=["history", "BTCUSDT"])


# --- mark-price bars -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("symbol", MARK)
def test_mark_bars_load_beside_the_bars_when_asked_for(symbol: str) -> None:
    raw = load_bundled(BUNDLED, symbol, 60, mark=True)
    assert raw.mark is not None and len(raw.mark) == 17_544 and raw.meta["mark_minutes"] == 60
    assert raw.mark["open_time"].iloc[0] == utc("2024-01-01") and (raw.mark["volume"] == 0).all()
    assert np.all(np.diff(frame_ms(raw.mark["open_time"])) == 60 * MIN)
    assert any("_mark_1h_" in k for k in raw.meta["inputs"])
    # the mark close sits within a few basis points of the last price's close (median 0.3-1.3 bp, PROVENANCE)
    bars = raw.bars[raw.bars["open_time"] >= utc("2024-01-01")].reset_index(drop=True)
    if symbol == "SOLUSDT":  # shipped at 5 minutes: compare each hour's last close
        bars = bars.iloc[11::12].reset_index(drop=True)
    gap = np.abs(np.log(bars["close"].to_numpy() / raw.mark["close"].to_numpy()))
    assert np.median(gap) < 2e-4 and gap.max() < 0.02


def test_mark_bars_of_a_timeframe_they_do_not_divide_are_not_read() -> None:
    raw = load_bundled(BUNDLED, "BTCUSDT", 30, mark=True)  # mark bars ship at 60 min only
    assert raw.mark is None and not any("_mark_" in k for k in raw.meta["inputs"])


def test_a_tampered_mark_file_is_refused_naming_it(tmp_path: Path) -> None:
    for f in bundled.SHIPPED:
        if f.symbol == "ETHUSDT":
            shutil.copyfile(BUNDLED / f.name, tmp_path / f.name)
    mark = tmp_path / "ETHUSDT_USDM_mark_1h_2024-2025.csv.gz"
    data = bytearray(mark.read_bytes())
    data[-50] ^= 1
    mark.write_bytes(bytes(data))
    load_bundled(tmp_path, "ETHUSDT", 60)  # not asked for: not read
    with pytest.raises(DataError, match=r"sha256 .* does not match") as err:
        load_bundled(tmp_path, "ETHUSDT", 60, mark=True)
    assert str(mark) in str(err.value)


def test_mark_bars_go_through_the_bar_contract(tmp_path: Path, make_bars: Callable, monkeypatch) -> None:
    bars = make_bars(n=24, minutes=60).rename(columns={"open_time": "open_time_ms"}).assign(date="-")
    paths = {k: tmp_path / f"TESTUSDT_USDM_{k}_2024.csv" for k in ("1h", "mark_1h")}
    bars.to_csv(paths["1h"], index=False)
    broken = bars.copy()
    broken.loc[7, "close"] = -1.0
    broken.to_csv(paths["mark_1h"], index=False)
    shipped = [bundled.Shipped.from_name(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in paths.values()]
    monkeypatch.setattr(bundled, "SHIPPED", tuple(shipped))
    assert load_bundled(tmp_path, "TESTUSDT", 60).meta["funding_available"] is False  # no funding file: none
    with pytest.raises(DataError, match=rf"{re.escape(str(paths['mark_1h']))}: column close is zero or negative"):
        load_bundled(tmp_path, "TESTUSDT", 60, mark=True)


@pytest.mark.parametrize(
    ("timeframe", "files"),
    [
        (30, ["BTCUSDT_USDM_5m_2023.csv.gz", "BTCUSDT_USDM_5m_2024-2025.csv.gz"]),
        (60, ["BTCUSDT_USDM_1h_2019-2025.csv.gz"]),
        (240, ["BTCUSDT_USDM_1h_2019-2025.csv.gz"]),
    ],
)
def test_btc_reads_the_coarsest_resolution_that_divides_the_timeframe(timeframe: int, files: list[str]) -> None:
    raw = load_bundled(BUNDLED, "BTCUSDT", timeframe)
    assert [Path(k).name for k in raw.meta["inputs"]] == [*files, "BTCUSDT_USDM_funding_8h_2019-2025.csv"]
    if timeframe == 30:  # 2023 and 2024-2025 join without a gap
        assert len(raw.bars) == 105_120 + 210_528
        assert np.all(np.diff(frame_ms(raw.bars["open_time"])) == 5 * MIN)


def test_a_tampered_copy_is_refused_naming_the_file(tmp_path: Path) -> None:
    for name in ("AVAXUSDT_USDM_1h_2024-2025.csv.gz", "AVAXUSDT_USDM_funding_8h_2024-2025.csv"):
        shutil.copyfile(BUNDLED / name, tmp_path / name)
    bars = tmp_path / "AVAXUSDT_USDM_1h_2024-2025.csv.gz"
    data = bytearray(bars.read_bytes())
    data[-100] ^= 1
    bars.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"sha256 .* does not match") as err:
        load_bundled(tmp_path, "AVAXUSDT", 60)
    assert str(bars) in str(err.value)


def test_an_unshipped_symbol_in_a_universe_is_refused() -> None:
    cfg = data_cfg(symbols=["AVAXUSDT", "PEPEUSDT"], timeframe_minutes=60)
    with pytest.raises(ConfigError, match=r"data\.symbols: 'PEPEUSDT' is not in the bundled data, which ships ADA"):
        load_universe(cfg, REPO)


@pytest.mark.parametrize(("symbol", "timeframe", "shipped"), [("BTCUSDT", 7, "5, 60"), ("AVAXUSDT", 90, "60")])
def test_a_timeframe_no_shipped_resolution_divides_is_refused(symbol: str, timeframe: int, shipped: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"data\.timeframe_minutes is {timeframe}, .* {symbol} bars are {shipped} min"
    ):
        load_bundled(BUNDLED, symbol, timeframe)


def test_overlapping_files_of_one_resolution_are_refused(
    tmp_path: Path, make_bars: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two shipped versions of one bar must never be joined: a registry of two overlapping synthetic files."""
    bars = make_bars(n=24, minutes=60).rename(columns={"open_time": "open_time_ms"}).assign(date="-")
    early, late = tmp_path / "TESTUSDT_USDM_1h_2024.csv", tmp_path / "TESTUSDT_USDM_1h_2025.csv"
    bars.iloc[10:].to_csv(late, index=False)  # listed first: the loader sorts by time
    bars.iloc[:14].to_csv(early, index=False)  # four bars in both
    funding = tmp_path / "TESTUSDT_USDM_funding_8h_2024.csv"
    pd.DataFrame({"funding_time_ms": bars["open_time_ms"][:1], "funding_rate": [1e-4]}).to_csv(funding, index=False)
    shipped = [
        bundled.Shipped.from_name(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in (late, early, funding)
    ]
    monkeypatch.setattr(bundled, "SHIPPED", tuple(shipped))
    with pytest.raises(
        DataError, match=rf"{re.escape(str(early))} \(to .*\) and {re.escape(str(late))} \(from .*\) overlap"
    ):
        load_bundled(tmp_path, "TESTUSDT", 60)


# --- data.start ------------------------------------------------------------------------------------------------------


def test_start_drops_bars_and_funding_before_it(tmp_path: Path, make_bars: Callable) -> None:
    make_bars(n=2 * 288).to_csv(tmp_path / "bars.csv", index=False)  # two days of 5-minute bars
    stamps = ["2024-01-01T16:00:00Z", "2024-01-02T00:00:00Z", "2024-01-02T08:00:00Z"]
    pd.DataFrame({"funding_time": stamps, "funding_rate": [1e-4, 2e-4, 3e-4]}).to_csv(tmp_path / "f.csv", index=False)
    files = {"source": "file", "path": "bars.csv", "funding_path": "f.csv"}
    raw = load_source(data_cfg(**files, start="2024-01-02"), tmp_path)
    assert len(raw.bars) == 288 and raw.bars["open_time"].iloc[0] == utc("2024-01-02")
    assert raw.funding["funding_rate"].tolist() == [2e-4, 3e-4] and raw.meta["start"] == "2024-01-02"
    assert raw.bars.index.equals(pd.RangeIndex(288)) and raw.funding.index.equals(pd.RangeIndex(2))
    everything = load_source(data_cfg(**files, start=None), tmp_path)
    assert (len(everything.bars), len(everything.funding), everything.meta["start"]) == (576, 3, None)


def test_start_after_the_data_is_refused_naming_its_span(tmp_path: Path, make_bars: Callable) -> None:
    make_bars().to_csv(tmp_path / "bars.csv", index=False)
    span = r"spans 2024-01-01 00:00:00\+00:00 \.\. 2024-01-01 03:55:00\+00:00"
    with pytest.raises(DataError, match=rf"data\.start is 2024-02-01, but the file BTCUSDT data {span}"):
        load_source(data_cfg(source="file", path="bars.csv", start="2024-02-01"), tmp_path)


def test_start_applies_to_the_shipped_data() -> None:
    raw = load_source(data_cfg(symbol="AVAXUSDT", timeframe_minutes=60, start="2025-12-31"), REPO)
    assert (len(raw.bars), len(raw.funding)) == (24, 3)


# --- universes -------------------------------------------------------------------------------------------------------


def test_load_universe_keeps_the_order_of_data_symbols() -> None:
    cfg = data_cfg(symbols=["SOLUSDT", "BTCUSDT", "AVAXUSDT"], timeframe_minutes=60, start="2025-12-01")
    raws = load_universe(cfg, REPO)
    assert list(raws) == ["SOLUSDT", "BTCUSDT", "AVAXUSDT"]
    for symbol, raw in raws.items():
        assert raw.meta["symbol"] == symbol and raw.bars["open_time"].iloc[0] == utc("2025-12-01")
        assert all(Path(k).name.startswith(symbol) for k in raw.meta["inputs"])


def test_load_universe_of_one_is_the_one_asset_form() -> None:
    cfg = data_cfg(symbol="LINKUSDT", timeframe_minutes=60, start="2025-12-31")
    (raw,) = load_universe(cfg, REPO).values()
    pd.testing.assert_frame_equal(raw.bars, load_source(cfg, REPO).bars)


def test_file_source_reads_one_file_per_symbol(tmp_path: Path, make_bars: Callable) -> None:
    for seed, symbol in enumerate(("BTCUSDT", "ETHUSDT")):
        make_bars(seed=seed).to_csv(tmp_path / f"bars_{symbol}.csv", index=False)
        pd.DataFrame({"funding_time": ["2024-01-01T00:00:00Z"], "funding_rate": [seed]}).to_csv(
            tmp_path / f"funding_{symbol}.csv", index=False
        )
    cfg = data_cfg(
        source="file", symbols=["ETHUSDT", "BTCUSDT"], path="bars_{symbol}.csv", funding_path="funding_{symbol}.csv"
    )
    raws = load_universe(cfg, tmp_path)
    assert list(raws) == ["ETHUSDT", "BTCUSDT"]
    for seed, symbol in enumerate(("BTCUSDT", "ETHUSDT")):
        raw = raws[symbol]
        np.testing.assert_array_equal(raw.bars["close"], make_bars(seed=seed)["close"])
        assert raw.funding["funding_rate"].tolist() == [seed] and raw.meta["symbol"] == symbol
        assert set(raw.meta["inputs"]) == {f"bars_{symbol}.csv", f"funding_{symbol}.csv"}


@pytest.mark.parametrize("key", ["path", "funding_path"])
def test_file_source_needs_the_placeholder_for_several_symbols(tmp_path: Path, key: str) -> None:
    paths = {"path": "bars_{symbol}.csv", "funding_path": "funding_{symbol}.csv", key: "one.csv"}
    cfg = data_cfg(source="file", symbols=["BTCUSDT", "ETHUSDT"], **paths)
    with pytest.raises(
        ConfigError, match=rf"data\.{key} is 'one\.csv', but data\.symbols lists 2 symbols: put \{{symbol\}}"
    ):
        load_source(cfg, tmp_path, "BTCUSDT")


def test_huggingface_is_one_asset_only(tmp_path: Path) -> None:
    cfg = data_cfg(source="huggingface", symbols=["BTCUSDT", "ETHUSDT"])
    with pytest.raises(ConfigError, match=r"data\.symbols lists 2 symbols, but the Hugging Face dataset holds one"):
        load_universe(cfg, tmp_path)
