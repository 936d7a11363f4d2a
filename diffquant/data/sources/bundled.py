"""The shipped offline default: Binance USD-M BTCUSDT 5-minute bars and 8-hour funding, 2024-2025.

Both files are checked against their sha256 on every load (see ``data_source/README`` for provenance).
"""

from __future__ import annotations

from pathlib import Path

from diffquant.data.contracts import BAR_COLUMNS, PRICE_COLUMNS, check_columns, validate_bars, validate_funding
from diffquant.data.sources._common import RawData, check_resolution, checked_sha256, make_meta, read_table
from diffquant.errors import ConfigError

BUNDLED_DIR = Path("data_source/bundled")
SYMBOL = "BTCUSDT"
MINUTES = 5
BARS_FILE = ("BTCUSDT_USDM_5m_2024-2025.csv.gz", "1f683712bff07841eb817cebe091328ec914291c710567bac23b3fcb91ed7d8c")
FUNDING_FILE = (
    "BTCUSDT_USDM_funding_8h_2024-2025.csv",
    "6fdce4eef2f52ed719e9d425ae9c8ec968570cd868bb116aabdb910cd04366f8",
)


def load_bundled(directory: Path, symbol: str = SYMBOL) -> RawData:
    """Load the shipped files from ``directory`` (a parameter so tests can point it at a tampered copy)."""
    if symbol != SYMBOL:
        raise ConfigError(
            f"data.symbol is {symbol!r} but the bundled data is {SYMBOL} only; "
            "use data.source: binance or file for another symbol"
        )
    bars_path, funding_path = directory / BARS_FILE[0], directory / FUNDING_FILE[0]
    inputs = {str(bars_path): checked_sha256(bars_path, BARS_FILE[1])}
    inputs[str(funding_path)] = checked_sha256(funding_path, FUNDING_FILE[1])

    raw = read_table(bars_path)
    check_columns(raw, ("date", "open_time_ms", *PRICE_COLUMNS, "volume"), (), str(bars_path))
    bars = validate_bars(raw.rename(columns={"open_time_ms": "open_time"})[list(BAR_COLUMNS)], str(bars_path))
    check_resolution(bars, MINUTES, str(bars_path), "the bundled 5-minute bars")

    raw = read_table(funding_path)
    check_columns(raw, ("funding_time_ms", "funding_rate"), (), str(funding_path))
    funding = validate_funding(raw.rename(columns={"funding_time_ms": "funding_time"}), str(funding_path))
    return RawData(bars, funding, make_meta("bundled", SYMBOL, MINUTES, inputs, funding=True))
