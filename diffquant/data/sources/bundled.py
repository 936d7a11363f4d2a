"""The shipped offline data: Binance USD-M perpetual bars, 8-hour funding and mark-price bars, in data_source/bundled.

Every file is listed in ``SHIPPED`` with its sha256 and checked on every load (``data_source/README.md`` gives the
provenance). An asset may ship at several resolutions; a run reads the coarsest one that its timeframe is a multiple
of, so BTC at 30 minutes reads the 5-minute files (2023, 2024-2025) and BTC at 1 hour the long 1-hour file. Mark-price
bars (six assets, 1 hour) are read only when asked for (the premium features), by the same rule and the same checks
as the bars. An asset without a funding file (BCH) loads with ``funding_available: false``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Literal

import pandas as pd

from diffquant.data.contracts import BAR_COLUMNS, PRICE_COLUMNS, check_columns, validate_bars, validate_funding
from diffquant.data.sources._common import (
    RawData,
    check_resolution,
    checked_sha256,
    empty_funding,
    make_meta,
    read_table,
)
from diffquant.errors import ConfigError, DataError

BUNDLED_DIR = Path("data_source/bundled")
_NAME = re.compile(
    r"(?P<symbol>[A-Z0-9]+)_USDM_(?:(?P<mark>mark_)?(?P<bar>\d+[mh])|funding_8h)"
    r"_(?P<first>\d{4})(?:-(?P<last>\d{4}))?\.csv(?:\.gz)?"
)
_FILES = {
    "ADAUSDT_USDM_1h_2020-2025.csv.gz": "1c6270b7dd6b253cf7f5cc09c30d645a997efa14ab253d6149e881fd6eebd772",
    "ADAUSDT_USDM_funding_8h_2020-2025.csv": "b808619aa05aff132e0e0eafd20eadc1fa2e6e35f148679393ed161812d3d2c0",
    "ADAUSDT_USDM_mark_1h_2024-2025.csv.gz": "13182bebd8298a5ce422bdc23c317848b1e9757e7f5d979b1613ba99e7ef1a30",
    "ARBUSDT_USDM_1h_2024-2025.csv.gz": "e9211a2be3c8d680c94cb7247c0beed6dd8a9cb074be09c651e4726b7b222554",
    "ARBUSDT_USDM_funding_8h_2024-2025.csv": "8bb5feb1060946134dee99b80dbf841dc3911a2e1d4b3aa084e7e84a15a1ebaa",
    "AVAXUSDT_USDM_1h_2024-2025.csv.gz": "1c321064d49a1e703db15e573061fa42fa555390edd8dd5d834e7eb5c89cca63",
    "AVAXUSDT_USDM_funding_8h_2024-2025.csv": "de9ba4e5f9042fb53e3802727b6cce4d1bbf57908edb9c6e18d4a7133624bd0c",
    "BCHUSDT_USDM_1h_2019-2025.csv.gz": "edcb3343803bd4177c3a0336b3f24032b0de604d8e5ab9e95b34406db7d4d966",
    "BNBUSDT_USDM_1h_2024-2025.csv.gz": "38996475b90629e0f4d3d2b6dfd33ff75c1072002d3044433f8fc9f23fa78c80",
    "BNBUSDT_USDM_funding_8h_2024-2025.csv": "51107283cdc211f5604e670bcf098766760387bc4d24db844f329516c7d660f9",
    "BTCUSDT_USDM_1h_2019-2025.csv.gz": "8ced42be86d53fcfc7000e82acd512650fe19e8920d8193b9664c04431d6dae4",
    "BTCUSDT_USDM_5m_2023.csv.gz": "79db2883113368e1ed49acf1307f93208936acbf05f906319369a6ecc5749299",
    "BTCUSDT_USDM_5m_2024-2025.csv.gz": "1f683712bff07841eb817cebe091328ec914291c710567bac23b3fcb91ed7d8c",
    "BTCUSDT_USDM_funding_8h_2019-2025.csv": "d142cf866590968994a79158633efba913924c40b7e8e4ed7f510b34af6bd34e",
    "BTCUSDT_USDM_funding_8h_2024-2025.csv": "6fdce4eef2f52ed719e9d425ae9c8ec968570cd868bb116aabdb910cd04366f8",
    "BTCUSDT_USDM_mark_1h_2024-2025.csv.gz": "3e9e8dbc2e6e19d3887528e6bb83fe9ac3b9396a39c74cc3d8e5c9a3ab1ca18d",
    "DOGEUSDT_USDM_1h_2024-2025.csv.gz": "6523884e94c5e9b031af6df8baf4faf8ba9d5bbbeb0408a56a76c49e156ead74",
    "DOGEUSDT_USDM_funding_8h_2024-2025.csv": "c7bbe418deaf63bb32ba08a7b38730a3f1a3a3b47d7749b8785a28a6dd7fd418",
    "DOTUSDT_USDM_1h_2024-2025.csv.gz": "d1be080437fc045a9fba91187d5ea7809c02afb5d3f4749bc2bc9726ce6bbdc2",
    "DOTUSDT_USDM_funding_8h_2024-2025.csv": "d2531978822970887641bc21ed2020187f55ceb103ddc01a5f44ca13fb8b5c42",
    "ETHUSDT_USDM_1h_2019-2025.csv.gz": "2a2631f27a64ec376c992aab42388f40e956ce4b2c56be8beef5a2d45a585bd3",
    "ETHUSDT_USDM_funding_8h_2019-2025.csv": "49b0dca8f97032b1809cf005d70426919d7c8940f450b6958d50a2aff30a879a",
    "ETHUSDT_USDM_mark_1h_2024-2025.csv.gz": "e04577f431270e322d58e417da7f79eb421fdba960e989cd015ee7d6085467e7",
    "LINKUSDT_USDM_1h_2024-2025.csv.gz": "6ade2f8185ff5d23851c063849779c268f19a7ef1f3af175891c40fa2d250f38",
    "LINKUSDT_USDM_funding_8h_2024-2025.csv": "30f91069d66a5abb984f831cf633e2768d976a17d2e4644ca068fdd0d1994d0e",
    "LTCUSDT_USDM_1h_2020-2025.csv.gz": "6a496ce922f6d4d874f2b8e8671e089cd029de7862046522d3274550be503f76",
    "LTCUSDT_USDM_funding_8h_2020-2025.csv": "dec28e497f99235949c659632f6c3164193c1fbb696406305d23574eac9c0ada",
    "LTCUSDT_USDM_mark_1h_2024-2025.csv.gz": "a1ad8b1ca9e4e848227fb02766e1414a865700d842acd41baf5e266e3a637dc5",
    "SOLUSDT_USDM_5m_2024-2025.csv.gz": "caf6d1fbd7ec6d54300df9b0e659b7d46ca4345b321cb8b11078332d6c19796e",
    "SOLUSDT_USDM_funding_8h_2024-2025.csv": "38ef5e055c2ec96ec18a96b0aa26b62502c9634cc6568c2f33cc14b81958edf4",
    "SOLUSDT_USDM_mark_1h_2024-2025.csv.gz": "c63f2eabbefaf076b316f01818ae22478bf71d638feb9736ed6918432ad18c1d",
    "XRPUSDT_USDM_1h_2020-2025.csv.gz": "38e366fab156a4c6f09019f939f14d7d472125fa1d90c71f226b1837385dacbf",
    "XRPUSDT_USDM_funding_8h_2020-2025.csv": "7ab0429184eb50cd88e34341b3ad32c5564f23a3e8183854e0dbcf22baf9bf38",
    "XRPUSDT_USDM_mark_1h_2024-2025.csv.gz": "74c0284657c89817d4c3dc59c3c42740103588ec31d8230b94d2ca0021d1115a",
}


@dataclass(frozen=True)
class Shipped:
    """One shipped file; ``minutes`` is the bar length (None for funding), ``years`` the span its name states."""

    symbol: str
    kind: Literal["bars", "mark", "funding"]
    minutes: int | None
    name: str
    sha256: str
    years: tuple[int, int]

    @classmethod
    def from_name(cls, name: str, sha256: str) -> Shipped:
        """Everything but the hash is read from the name, so the registry cannot contradict the file names."""
        m = _NAME.fullmatch(name)
        if m is None:
            raise ValueError(
                f"{name}: not a shipped-file name (SYMBOL_USDM_<5m|1h|mark_1h|funding_8h>_YYYY[-YYYY].csv[.gz])"
            )
        bar = m["bar"]  # "5m", "1h"; None for a funding file
        minutes = None if bar is None else int(bar[:-1]) * (60 if bar.endswith("h") else 1)
        years = (int(m["first"]), int(m["last"] or m["first"]))
        kind = "funding" if minutes is None else "mark" if m["mark"] else "bars"
        return cls(m["symbol"], kind, minutes, name, sha256, years)


SHIPPED = tuple(Shipped.from_name(name, digest) for name, digest in _FILES.items())
SYMBOLS = tuple(sorted({f.symbol for f in SHIPPED}))
MARK_SYMBOLS = tuple(sorted({f.symbol for f in SHIPPED if f.kind == "mark"}))


def load_bundled(directory: Path, symbol: str, timeframe_minutes: int, mark: bool = False) -> RawData:
    """Load ``symbol``'s shipped bars for ``timeframe_minutes`` and its longest funding file from ``directory``;
    ``mark``: its mark-price bars too (``RawData.mark`` stays None where none ship at a length that fits)."""
    files = [f for f in SHIPPED if f.symbol == symbol]
    if not files:
        raise ConfigError(
            f"data.symbols: {symbol!r} is not in the bundled data, which ships {', '.join(SYMBOLS)}; "
            "pick one of those, or use data.source: binance or file for another symbol"
        )
    bar_files = [f for f in files if f.kind == "bars"]
    minutes = _resolution(bar_files, symbol, timeframe_minutes, "bars")
    inputs: dict[str, str] = {}
    chosen = [f for f in bar_files if f.minutes == minutes]
    bars = _join([_read_bars(directory / f.name, f.sha256, minutes, inputs, "bars") for f in chosen])
    funding_files = [f for f in files if f.kind == "funding"]
    funding = empty_funding()
    if funding_files:
        longest = max(funding_files, key=lambda f: f.years[1] - f.years[0])
        funding = _read_funding(directory / longest.name, longest.sha256, inputs)
    meta = make_meta("bundled", symbol, minutes, inputs, funding=bool(funding_files))
    mark_files = [f for f in files if f.kind == "mark" and timeframe_minutes % f.minutes == 0] if mark else []
    if not mark_files:
        return RawData(bars, funding, meta)
    meta["mark_minutes"] = max(f.minutes for f in mark_files)  # the coarsest that fits, as for the bars
    marks = [f for f in mark_files if f.minutes == meta["mark_minutes"]]
    mark_bars = _join([_read_bars(directory / f.name, f.sha256, f.minutes, inputs, "mark-price bars") for f in marks])
    return RawData(bars, funding, meta, mark=mark_bars)


def _resolution(files: list[Shipped], symbol: str, timeframe_minutes: int, what: str) -> int:
    """The coarsest shipped bar length that divides the timeframe: the fewest rows to read and aggregate."""
    shipped = sorted({f.minutes for f in files if f.minutes is not None})
    fits = [m for m in shipped if timeframe_minutes % m == 0]
    if not fits:
        raise ConfigError(
            f"data.timeframe_minutes is {timeframe_minutes}, but the bundled {symbol} {what} are "
            f"{', '.join(map(str, shipped))} min and none divides it; choose a multiple of one of them"
        )
    return fits[-1]


def _read_bars(path: Path, sha256: str, minutes: int, inputs: dict[str, str], kind: str) -> tuple[Path, pd.DataFrame]:
    """One shipped bar file (trade or mark price): hash, columns, the bar contract and its resolution."""
    inputs[str(path)] = checked_sha256(path, sha256)
    raw = read_table(path)
    check_columns(raw, ("date", "open_time_ms", *PRICE_COLUMNS, "volume"), (), str(path))
    bars = validate_bars(raw.rename(columns={"open_time_ms": "open_time"})[list(BAR_COLUMNS)], str(path))
    check_resolution(bars, minutes, str(path), f"the bundled {minutes}-minute {kind}")
    return path, bars


def _join(parts: list[tuple[Path, pd.DataFrame]]) -> pd.DataFrame:
    """Files of one resolution in time order; an overlap would mean two versions of a bar, so it is refused."""
    parts = sorted(parts, key=lambda part: part[1]["open_time"].iloc[0])
    for (before, a), (after, b) in pairwise(parts):
        if a["open_time"].iloc[-1] >= b["open_time"].iloc[0]:
            raise DataError(
                f"{before} (to {a['open_time'].iloc[-1]}) and {after} (from {b['open_time'].iloc[0]}) overlap; "
                "the shipped bar files of one resolution must follow each other: restore data_source/bundled"
            )
    if len(parts) == 1:
        return parts[0][1]
    return pd.concat([bars for _, bars in parts], ignore_index=True)


def _read_funding(path: Path, sha256: str, inputs: dict[str, str]) -> pd.DataFrame:
    inputs[str(path)] = checked_sha256(path, sha256)
    raw = read_table(path)
    check_columns(raw, ("funding_time_ms", "funding_rate"), (), str(path))
    return validate_funding(raw.rename(columns={"funding_time_ms": "funding_time"}), str(path))
