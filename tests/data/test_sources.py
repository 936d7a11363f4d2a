"""Every source, offline: the shipped files, a hand-built Hub cache, a loopback Binance archive, user files.

Bad inputs are checked twice: in-process (a DataError naming the file and the row or column) and through
``python -m stages.download`` (exit code 2, one ERROR line, no traceback, no output left behind).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pandas as pd
import pytest
import yaml

from diffquant.config import DataConfig, from_dict
from diffquant.data.sources import close_to_open, load_bundled, load_source, load_universe
from diffquant.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "data_source" / "bundled"
MIN = 60_000
JAN_31_2330 = 1_706_743_800_000  # 2024-01-31 23:30 UTC


def data_cfg(**data: object) -> DataConfig:
    return from_dict({"data": data}).data


def frame_ms(bars: pd.DataFrame) -> np.ndarray:
    return bars["open_time"].to_numpy(dtype="datetime64[ms]").astype(np.int64)


# --- bundled ---------------------------------------------------------------------------------------------------------


def test_bundled_loads_the_shipped_files() -> None:
    raw = load_source(data_cfg(), REPO)
    assert len(raw.bars) == 210_528 and len(raw.funding) == 2_193
    assert list(raw.bars.columns) == ["open_time", "open", "high", "low", "close", "volume"]
    assert str(raw.bars["open_time"].dtype) == "datetime64[ms, UTC]"
    assert np.all(np.diff(frame_ms(raw.bars)) == 5 * MIN)
    # Every 5-minute file is read (2023 too) and the longest funding file; data.start keeps 2024-2025.
    assert raw.meta["inputs"] == {
        "data_source/bundled/BTCUSDT_USDM_5m_2023.csv.gz": (
            "79db2883113368e1ed49acf1307f93208936acbf05f906319369a6ecc5749299"
        ),
        "data_source/bundled/BTCUSDT_USDM_5m_2024-2025.csv.gz": (
            "1f683712bff07841eb817cebe091328ec914291c710567bac23b3fcb91ed7d8c"
        ),
        "data_source/bundled/BTCUSDT_USDM_funding_8h_2019-2025.csv": (
            "d142cf866590968994a79158633efba913924c40b7e8e4ed7f510b34af6bd34e"
        ),
    }
    assert raw.meta | {"inputs": None} == {
        "source": "bundled",
        "symbol": "BTCUSDT",
        "source_minutes": 5,
        "stamp": "open_time",
        "inputs": None,
        "funding_available": True,
        "start": "2024-01-01",
    }


@pytest.fixture
def tampered_root(tmp_path: Path) -> Path:
    """A repository root whose BTC funding file (the one the default reads) differs by one digit (still valid CSV)."""
    folder = tmp_path / "data_source" / "bundled"
    folder.mkdir(parents=True)
    for f in BUNDLED.iterdir():
        shutil.copyfile(f, folder / f.name)
    funding = folder / "BTCUSDT_USDM_funding_8h_2019-2025.csv"
    funding.write_text(funding.read_text().replace("0.00037409", "0.00037408", 1))
    return tmp_path


def test_bundled_refuses_a_tampered_copy(tampered_root: Path) -> None:
    folder = tampered_root / "data_source" / "bundled"
    with pytest.raises(DataError, match="sha256") as err:
        load_bundled(folder, "BTCUSDT", 30)
    assert str(folder / "BTCUSDT_USDM_funding_8h_2019-2025.csv") in str(err.value)


def test_bundled_refuses_an_unshipped_symbol() -> None:
    shipped = (
        "ADAUSDT, ARBUSDT, AVAXUSDT, BCHUSDT, BNBUSDT, BTCUSDT, DOGEUSDT, DOTUSDT, ETHUSDT, LINKUSDT, LTCUSDT, "
        "SOLUSDT, XRPUSDT"
    )
    with pytest.raises(ConfigError, match=rf"data\.symbols: 'PEPEUSDT' .* ships {shipped};"):
        load_bundled(BUNDLED, "PEPEUSDT", 30)


# --- file ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bars.csv", "bars.csv.gz", "bars.parquet"])
def test_file_source_reads_csv_and_parquet(tmp_path: Path, make_bars: Callable, name: str) -> None:
    bars = make_bars()
    path = tmp_path / name
    bars.to_parquet(path) if name.endswith(".parquet") else bars.to_csv(path, index=False)
    raw = load_source(data_cfg(source="file", path=name), tmp_path)
    np.testing.assert_array_equal(frame_ms(raw.bars), bars["open_time"])
    np.testing.assert_allclose(raw.bars[["open", "high", "low", "close", "volume"]], bars.iloc[:, 1:])
    assert raw.meta["inputs"] == {name: hashlib.sha256(path.read_bytes()).hexdigest()}
    assert raw.meta["funding_available"] is False and raw.funding.empty
    assert list(raw.funding.columns) == ["funding_time", "funding_rate"]


def test_file_source_reads_funding_and_num_trades(tmp_path: Path, make_bars: Callable) -> None:
    make_bars().assign(num_trades=7).to_csv(tmp_path / "bars.csv", index=False)
    stamps = ["2024-01-01T00:00:00Z", "2024-01-01T08:00:00Z"]
    pd.DataFrame({"funding_time": stamps, "funding_rate": [1e-4, -2e-4]}).to_csv(tmp_path / "f.csv", index=False)
    raw = load_source(data_cfg(source="file", path="bars.csv", funding_path="f.csv"), tmp_path)
    assert raw.meta["funding_available"] is True and set(raw.meta["inputs"]) == {"bars.csv", "f.csv"}
    assert raw.funding["funding_rate"].tolist() == [1e-4, -2e-4]
    assert (raw.bars["num_trades"] == 7).all()


def test_close_time_stamps_become_open_times(tmp_path: Path, make_bars: Callable) -> None:
    bars = make_bars(minutes=15)
    bars.assign(open_time=bars["open_time"] + 15 * MIN - 1).to_csv(tmp_path / "bars.csv", index=False)
    cfg = data_cfg(source="file", path="bars.csv", stamp="close_time", source_minutes=15, timeframe_minutes=30)
    raw = load_source(cfg, tmp_path)
    np.testing.assert_array_equal(frame_ms(raw.bars), bars["open_time"])
    assert raw.meta["stamp"] == "open_time"


def test_close_to_open_handles_exact_and_last_millisecond_stamps() -> None:
    opens = np.array([0, 5 * MIN, 10 * MIN]) + JAN_31_2330
    np.testing.assert_array_equal(close_to_open(opens + 5 * MIN, 5), opens)
    np.testing.assert_array_equal(close_to_open(opens + 5 * MIN - 1, 5), opens)
    np.testing.assert_array_equal(close_to_open(opens + MIN - 1, 1), opens)


def test_file_source_refuses_a_wrong_resolution(tmp_path: Path, make_bars: Callable) -> None:
    make_bars(minutes=5).to_csv(tmp_path / "bars.csv", index=False)
    with pytest.raises(DataError, match=r"rows 0 and 1 are 5 min apart.*data.source_minutes"):
        load_source(data_cfg(source="file", path="bars.csv", source_minutes=15, timeframe_minutes=30), tmp_path)


def _set(df: pd.DataFrame, row: int, col: str, value: object) -> pd.DataFrame:
    out = df.copy()
    out.loc[row, col] = value
    return out


BAD_FILES: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], str]] = {
    "truncated_gzip": (lambda d: d, r"cannot be read \(EOFError.*truncated or corrupt"),
    "missing_column": (lambda d: d.drop(columns="volume"), r"missing column\(s\) \['volume'\]"),
    "extra_column": (lambda d: d.assign(vwap=1.0), r"unexpected column\(s\) \['vwap'\]"),
    "duplicated_stamps": (lambda d: _set(d, 3, "open_time", d["open_time"][2]), r"duplicated open_time at row\(s\) 3"),
    "unsorted_stamps": (
        lambda d: d.iloc[[0, 1, 2, 4, 3, *range(5, len(d))]],
        r"open_time not increasing at row\(s\) 4",
    ),
    "nan": (lambda d: _set(d, 5, "close", np.nan), r"column close is NaN or infinite at row\(s\) 5"),
    "zero_price": (lambda d: _set(d, 6, "low", 0.0), r"column low is zero or negative at row\(s\) 6"),
    "negative_price": (lambda d: _set(d, 7, "open", -1.0), r"column open is zero or negative at row\(s\) 7"),
}


def _write_bad(case: str, folder: Path, bars: pd.DataFrame) -> Path:
    path = folder / ("bars.csv.gz" if case == "truncated_gzip" else "bars.csv")
    BAD_FILES[case][0](bars).to_csv(path, index=False)
    if case == "truncated_gzip":
        path.write_bytes(path.read_bytes()[:-40])
    return path


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_is_refused_naming_file_and_place(tmp_path: Path, make_bars: Callable, case: str) -> None:
    path = _write_bad(case, tmp_path, make_bars())
    with pytest.raises(DataError, match=BAD_FILES[case][1]) as err:
        load_source(data_cfg(source="file", path=path.name), tmp_path)
    assert str(path) in str(err.value)


# --- the stage, end to end -------------------------------------------------------------------------------------------


def run_download(root: Path, data: dict) -> subprocess.CompletedProcess[str]:
    (root / "params.yaml").write_text(yaml.safe_dump({"data": data}))
    return subprocess.run(
        [sys.executable, "-m", "stages.download", "--params", "params.yaml"],
        cwd=REPO,
        env={**os.environ, "DVC_ROOT": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def outputs(root: Path) -> list[Path]:
    return sorted(p for d in ("data_source/raw", "outputs") for p in (root / d).rglob("*") if p.is_file())


@pytest.mark.slow  # a stage process
def test_stage_writes_tables_reports_and_metrics(tmp_path: Path, make_bars: Callable) -> None:
    make_bars(n=60).to_csv(tmp_path / "bars.csv", index=False)
    done = run_download(tmp_path, {"source": "file", "path": "bars.csv"})
    assert done.returncode == 0, done.stderr
    raw = tmp_path / "data_source" / "raw" / "BTCUSDT"
    assert {p.name for p in outputs(tmp_path)} == {
        "bars.parquet",
        "funding.parquet",
        "meta.json",
        "quality.json",
        "download.json",
    }
    assert len(pd.read_parquet(raw / "bars.parquet")) == 60
    assert yaml.safe_load((raw / "meta.json").read_text())["funding_available"] is False
    metrics = yaml.safe_load((tmp_path / "outputs" / "metrics" / "download.json").read_text())
    assert metrics["BTCUSDT"]["n_bars"] == 60 and metrics["BTCUSDT"]["gaps"] == 0
    assert "no funding rates" in done.stderr


def _assert_clean_failure(done: subprocess.CompletedProcess[str], root: Path, fragment: str) -> None:
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and fragment in errors[0]
    assert outputs(root) == []


@pytest.mark.slow  # a stage process per case
@pytest.mark.parametrize("case", BAD_FILES)
def test_stage_exits_2_on_a_bad_file(tmp_path: Path, make_bars: Callable, case: str) -> None:
    path = _write_bad(case, tmp_path, make_bars())
    _assert_clean_failure(run_download(tmp_path, {"source": "file", "path": path.name}), tmp_path, str(path))


@pytest.mark.slow  # a stage process
def test_stage_exits_2_on_a_bad_checksum(tampered_root: Path) -> None:
    _assert_clean_failure(run_download(tampered_root, {"source": "bundled"}), tampered_root, "sha256")


# --- huggingface (a hand-built Hub cache, offline mode: the real download path) --------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"
NPZ = "btcusdt_1min_2021_2025.npz"


def hub_cache(root: Path, **arrays: np.ndarray) -> Path:
    repo = root / "hub" / "datasets--ResearchRL--diffquant-data"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    np.savez(repo / "snapshots" / COMMIT / NPZ, **arrays)
    return root / "hub"


def minute_arrays(make_bars: Callable, n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    bars = make_bars(n=n, minutes=1)
    values = np.column_stack([bars[["open", "high", "low", "close", "volume"]], np.arange(n)]).astype(np.float32)
    return bars["open_time"].to_numpy(), values


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def hf_cfg(cache: Path, stamp: str = "open_time") -> DataConfig:
    return data_cfg(source="huggingface", huggingface={"cache_dir": str(cache), "stamp": stamp})


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("stamp", ["open_time", "close_time"])
def test_huggingface_reads_the_hub_cache_offline(tmp_path: Path, make_bars: Callable, stamp: str) -> None:
    opens, values = minute_arrays(make_bars)
    # Binance-style close stamps: the last millisecond of the minute.
    stamps = opens + MIN - 1 if stamp == "close_time" else opens
    raw = load_source(hf_cfg(hub_cache(tmp_path, bars=values, timestamps=stamps), stamp), tmp_path)
    np.testing.assert_array_equal(frame_ms(raw.bars), opens)
    np.testing.assert_array_equal(raw.bars["num_trades"], np.arange(len(opens)))
    np.testing.assert_array_equal(raw.bars["close"], values[:, 3].astype(np.float64))
    assert list(raw.meta["inputs"]) == [f"hf://datasets/ResearchRL/diffquant-data@{COMMIT}/{NPZ}"]
    assert raw.meta["source_minutes"] == 1 and raw.meta["funding_available"] is False


@pytest.mark.usefixtures("offline")
def test_huggingface_without_cache_explains_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"pre-populate the Hub cache.*data.source: bundled"):
        load_source(hf_cfg(tmp_path / "empty"), tmp_path)


@pytest.mark.usefixtures("offline")
def test_huggingface_refuses_a_malformed_npz(tmp_path: Path, make_bars: Callable) -> None:
    _, values = minute_arrays(make_bars)
    with pytest.raises(DataError, match=r"missing key\(s\) \['timestamps'\]"):
        load_source(hf_cfg(hub_cache(tmp_path, bars=values)), tmp_path)


@pytest.mark.usefixtures("offline")
def test_huggingface_checks_the_expected_sha256(tmp_path: Path, make_bars: Callable) -> None:
    opens, values = minute_arrays(make_bars)
    cache = hub_cache(tmp_path, bars=values, timestamps=opens)
    good = hashlib.sha256((cache / "datasets--ResearchRL--diffquant-data/snapshots" / COMMIT / NPZ).read_bytes())
    cfg = data_cfg(source="huggingface", huggingface={"cache_dir": str(cache), "sha256": good.hexdigest()})
    assert len(load_source(cfg, tmp_path).bars) == len(opens)
    cfg = data_cfg(source="huggingface", huggingface={"cache_dir": str(cache), "sha256": "0" * 64})
    with pytest.raises(DataError, match=rf"{NPZ}: sha256 .* does not match the expected 0000"):
        load_source(cfg, tmp_path)


# --- binance (monthly archives served from a loopback HTTP server) ---------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(folder served, base URL) of an HTTP server on 127.0.0.1, stopped after the test."""
    www = tmp_path / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def write_zip(path: Path, rows: list[list[object]], header: tuple[str, ...] | None) -> Path:
    lines = ([",".join(header)] if header else []) + [",".join(str(v) for v in row) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(path.with_suffix(".csv").name, "\n".join(lines) + "\n")
    return path


KLINE_HEADER = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
)
UM = "data/futures/um/monthly"


def kline_rows(opens: np.ndarray, scale: int) -> list[list[object]]:
    """Kline rows for 5-minute ``opens`` (ms); ``scale`` 1000 writes the stamps in microseconds."""
    return [
        [t * scale, 100, 101, 99, 100.5, 2.5, (t + 5 * MIN - 1) * scale, 250, 40 + i, 1, 100, 0]
        for i, t in enumerate(opens)
    ]


@pytest.fixture
def two_months(archive: tuple[Path, str]) -> tuple[Path, str, np.ndarray]:
    """January with a header, ms stamps and a .CHECKSUM; February headerless, in microseconds, no .CHECKSUM."""
    www, url = archive
    opens = JAN_31_2330 + np.arange(12) * 5 * MIN  # 23:30 .. 00:25, across the month boundary
    jan = write_zip(www / UM / "klines/BTCUSDT/5m/BTCUSDT-5m-2024-01.zip", kline_rows(opens[:6], 1), KLINE_HEADER)
    write_zip(www / UM / "klines/BTCUSDT/5m/BTCUSDT-5m-2024-02.zip", kline_rows(opens[6:], 1000), None)
    Path(f"{jan}.CHECKSUM").write_text(f"{hashlib.sha256(jan.read_bytes()).hexdigest()}  {jan.name}\n")
    header = ("calc_time", "funding_interval_hours", "last_funding_rate")
    for month, t in (("01", 1_706_716_800_000), ("02", 1_706_745_600_000)):
        write_zip(www / UM / f"fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-{month}.zip", [[t, 8, 1e-4]], header)
    return www, url, opens


def binance_cfg(url: str, **over: object) -> DataConfig:
    return data_cfg(
        source="binance", binance={"base_url": url, "start_month": "2024-01", "end_month": "2024-02", **over}
    )


def test_binance_reads_monthly_archives(two_months: tuple[Path, str, np.ndarray]) -> None:
    _, url, opens = two_months
    raw = load_source(binance_cfg(url), Path("."))
    np.testing.assert_array_equal(frame_ms(raw.bars), opens)
    np.testing.assert_array_equal(raw.bars["num_trades"], 40 + np.r_[np.arange(6), np.arange(6)])
    assert len(raw.funding) == 2 and raw.meta["funding_available"] is True
    assert len(raw.meta["inputs"]) == 4 and all(k.startswith(url) for k in raw.meta["inputs"])
    assert raw.meta["source_minutes"] == 5


def test_binance_downloads_each_symbol(two_months: tuple[Path, str, np.ndarray]) -> None:
    www, url, opens = two_months
    for src in [p for p in (www / UM).rglob("*") if p.is_file()]:  # the same months again, as ETHUSDT
        dst = www / str(src.relative_to(www)).replace("BTCUSDT", "ETHUSDT")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    binance = {"base_url": url, "start_month": "2024-01", "end_month": "2024-02"}
    raws = load_universe(data_cfg(source="binance", symbols=["ETHUSDT", "BTCUSDT"], binance=binance), Path("."))
    assert list(raws) == ["ETHUSDT", "BTCUSDT"]
    for symbol, raw in raws.items():
        assert raw.meta["symbol"] == symbol and all(f"/{symbol}/" in k for k in raw.meta["inputs"])
        np.testing.assert_array_equal(frame_ms(raw.bars), opens)


def test_binance_without_funding(two_months: tuple[Path, str, np.ndarray]) -> None:
    raw = load_source(binance_cfg(two_months[1], funding=False), Path("."))
    assert raw.funding.empty and raw.meta["funding_available"] is False


def test_binance_refuses_a_bad_checksum(two_months: tuple[Path, str, np.ndarray]) -> None:
    www, url, _ = two_months
    (www / UM / "klines/BTCUSDT/5m/BTCUSDT-5m-2024-01.zip.CHECKSUM").write_text(f"{'0' * 64}  x.zip\n")
    with pytest.raises(DataError, match=r"BTCUSDT-5m-2024-01.zip: sha256 \w+ does not match its .CHECKSUM"):
        load_source(binance_cfg(url), Path("."))


def test_binance_missing_month_is_a_clear_error(two_months: tuple[Path, str, np.ndarray]) -> None:
    with pytest.raises(DataError, match=r"BTCUSDT-5m-2024-03.zip: not found \(404\)"):
        load_source(binance_cfg(two_months[1], end_month="2024-03"), Path("."))


def test_binance_without_network_is_a_clear_error() -> None:
    with pytest.raises(DataError, match=r"download failed.*data.source: bundled"):
        load_source(binance_cfg("http://127.0.0.1:9"), Path("."))
