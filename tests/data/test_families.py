"""The feature families on real shipped data: the default table is the old one bit for bit, each new channel equals a
plain per-bar reference, a table that starts later equals the full history past its warm-up, the mirror rules hold,
and bad inputs are refused by name."""

from __future__ import annotations

import hashlib
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from diffquant.config import FeatureConfig, UserColumn, build_section, from_dict
from diffquant.data.contracts import MINUTE_MS, to_ms
from diffquant.data.features import build_features, feature_names, features_from_inputs, mirror_spec, warmup_bars
from diffquant.data.inputs import at_timeframe, feature_inputs
from diffquant.data.sources import load_source
from diffquant.errors import ConfigError, DataError
from tests.data.families_data import ALL_CHANNELS, SYMBOLS, config, market_60, raws
from tests.data.real_data import fixture_bars_30m, fixture_funding  # noqa: F401  (registers the fixtures)
from tests.repo_copy import REPO

HOUR = 60 * MINUTE_MS
# Content hashes of build_features(bars_30m, funding, cfg, 30) computed with the code before the families existed
# (commit ed64a1b): the price/volume family must give these tables bit for bit.
BEFORE_FAMILIES = {
    "default": "1a85064fee2e742126b7b2ff5e22345f8ccf3f027c68546370c6779af958619a",
    "variant": "c75d53268154e5c9ce02a1c2861787b7f1a195e731f047739f287134be7acaa9",
    "custom": "e0ed01a14ed067a9f74b5b3e755558c2d14107567eb3c77b6bfad21fd734815c",
}
PRICE_CONFIGS = {
    "default": FeatureConfig(),
    "variant": FeatureConfig(preset="ohlc", typical_price=True, rolling_vol=False, time_features=True),
    "custom": FeatureConfig(preset="custom", custom_columns=["close", "volume"], vol_window=5, vol_window_vol=30),
}


def content_hash(table: pd.DataFrame) -> str:
    """sha256 of every column's name, dtype and values (independent of how parquet would write them)."""
    h = hashlib.sha256()
    for col in table.columns:
        h.update(col.encode())
        h.update(str(table[col].dtype).encode())
        values = to_ms(table[col]) if col == "open_time" else table[col].to_numpy()
        h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


def features_of(symbol: str, features: dict, **data: object) -> pd.DataFrame:
    """``symbol``'s feature table from the shared real data, with ``features`` (a ``features:`` mapping)."""
    cfg = config(features, **data)
    assets, _ = raws()
    tables = at_timeframe(assets[symbol], cfg.features, 60)[0]
    inputs = feature_inputs(tables, assets[symbol].funding, 60, market_60(), symbol)
    return features_from_inputs(inputs, cfg.features, 60)


# --- the default experiment ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRICE_CONFIGS)
def test_the_price_family_gives_the_tables_of_the_code_before_families(bars_30m, funding, name: str) -> None:
    table = build_features(bars_30m, funding, PRICE_CONFIGS[name], 30)
    assert content_hash(table) == BEFORE_FAMILIES[name]


def test_every_new_family_is_off_by_default() -> None:
    cfg = from_dict({}).features
    assert feature_names(cfg, False) == ["open", "high", "low", "close", "volume", "rolling_vol"]
    assert warmup_bars(cfg, 30) == 12
    assert cfg.funding.channels == cfg.premium.channels == cfg.market.channels == cfg.columns == []


def test_the_default_data_stages_write_the_metrics_dvc_lock_records(tmp_path: Path, monkeypatch) -> None:
    """download -> aggregate -> features with params.yaml as it is: each metrics JSON byte for byte as dvc.lock
    has it (the parquet files' bytes depend on the pyarrow that writes them, their content on the test above)."""
    from stages import aggregate, download, features

    monkeypatch.setenv("DVC_ROOT", str(REPO))
    monkeypatch.delenv("DVC_STAGE", raising=False)
    raw, bars, m = tmp_path / "raw", tmp_path / "bars", tmp_path / "m"
    download.main(["--out", str(raw), "--metrics", str(m / "download.json")])
    aggregate.main(["--raw", str(raw), "--out", str(bars), "--metrics", str(m / "aggregate.json")])
    out = tmp_path / "features"
    features.main(["--bars", str(bars), "--raw", str(raw), "--out", str(out), "--metrics", str(m / "features.json")])
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    for stage in ("download", "aggregate", "features"):
        (recorded,) = [o["md5"] for o in lock[stage]["outs"] if o["path"] == f"outputs/metrics/{stage}.json"]
        assert hashlib.md5((m / f"{stage}.json").read_bytes()).hexdigest() == recorded, stage
    assert content_hash(pd.read_parquet(out / "BTCUSDT.parquet")) == BEFORE_FAMILIES["default"]


# --- each channel against a plain per-bar reference -----------------------------------------------------------------


def funding_reference(table: pd.DataFrame, events: pd.DataFrame, n: int, w: int) -> dict[str, list[float]]:
    """Per bar, from the settlement events themselves: those at or before the bar's close, after the first bar."""
    first_open = int(to_ms(table["open_time"])[0]) - HOUR  # the table's first row is the data's second bar
    times = [int(t) for t in to_ms(events["funding_time"])]
    rates = events["funding_rate"].tolist()
    known = [(t, r) for t, r in zip(times, rates, strict=True) if t > first_open]
    out: dict[str, list[float]] = {k: [] for k in ("last", "mean", "zscore", "to_next", "paid_24h")}
    for close in (int(o) + HOUR for o in to_ms(table["open_time"])):
        seen = [(t, r) for t, r in known if t <= close]
        rs = [r for _, r in seen]
        out["last"].append(rs[-1] if rs else 0.0)
        out["mean"].append(statistics.fmean(rs[-n:]) if rs else 0.0)
        last_w = rs[-w:]
        z = (rs[-1] - statistics.fmean(last_w)) / max(statistics.pstdev(last_w), 1e-5) if rs else 0.0
        out["zscore"].append(z)
        if len(seen) >= 2:
            (t0, _), (t1, _) = seen[-2], seen[-1]
            out["to_next"].append(max(t1 + (t1 - t0) - close, 0) / (t1 - t0))
        else:
            out["to_next"].append(0.0)
        out["paid_24h"].append(sum(r for t, r in seen if t > close - 24 * HOUR))
    return out


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_funding_channels_equal_the_per_bar_reference(symbol: str) -> None:
    features = {"funding": {"channels": ["last", "mean", "zscore", "to_next", "paid_24h"], "zscore_settlements": 30}}
    table = features_of(symbol, features).iloc[:1500]
    want = funding_reference(table, raws()[0][symbol].funding, 3, 30)
    for channel, values in want.items():
        got = table[f"x_funding_{channel}"].to_numpy(np.float64)
        np.testing.assert_allclose(got, np.float32(values), rtol=1e-6, atol=1e-9, err_msg=channel)
    assert (table["x_funding_to_next"].iloc[100:] > 0).all()  # every hour of a running 8-hour schedule


def test_a_settlement_of_rate_zero_still_counts() -> None:
    """BNB settled at exactly 0 for months: the last settled rate is 0 then, not the last non-zero one."""
    raw = load_source(config({}).data, REPO, "BNBUSDT")
    cfg = FeatureConfig(funding=build_section(type(FeatureConfig().funding), {"channels": ["last", "to_next"]}, "f"))
    table = build_features(at_timeframe(raw, cfg, 60)[0].bars, raw.funding, cfg, 60)
    zero_settled = (table["funding_rate"] == 0) & (table["x_funding_to_next"] == 1.0)
    assert zero_settled.sum() > 100 and (table.loc[zero_settled, "x_funding_last"] == 0).all()


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_premium_channels_equal_the_per_bar_reference(symbol: str) -> None:
    table = features_of(symbol, {"premium": {"channels": ["last", "mean"], "mean_bars": 24}})
    mark = raws()[0][symbol].mark.set_index("open_time")["close"]
    premium = np.log(table["close"].to_numpy() / mark.loc[table["open_time"]].to_numpy())
    np.testing.assert_array_equal(table["x_premium_last"], premium.astype(np.float32))
    full = features_of(symbol, {"premium": {"channels": ["mean"], "mean_bars": 24}})
    bars = at_timeframe(raws()[0][symbol], config().features, 60)[0].bars
    whole = np.log(bars["close"].to_numpy() / mark.loc[bars["open_time"]].to_numpy())
    reference = pd.Series(whole).rolling(24, min_periods=1).mean().to_numpy()[1:]
    np.testing.assert_allclose(full["x_premium_mean"], reference, rtol=1e-5, atol=1e-9)
    assert np.median(np.abs(premium)) < 2e-4  # the README's 0.3-1.3 bp median gap


def test_market_channels_equal_the_per_bar_reference() -> None:
    k = 24
    features = {"market": {"channels": ["return", "excess", "reference"], "lookback_bars": k}}
    closes = {s: dict(zip(to_ms(b["open_time"]), b["close"], strict=True)) for s, b in market_60().items()}
    for symbol in SYMBOLS:
        table = features_of(symbol, features).iloc[:800]
        own = closes[symbol]
        for i, t in enumerate(to_ms(table["open_time"])):
            back = t - k * HOUR
            returns = [math.log(c[t] / c[back]) for c in closes.values() if t in c and back in c and back in own]
            market = statistics.fmean(returns) if returns else 0.0
            mine = math.log(own[t] / own[back]) - market if back in own else 0.0
            btc = math.log(closes["BTCUSDT"][t] / closes["BTCUSDT"][back]) if back in own else 0.0
            got = table.iloc[i][["x_market_return", "x_market_excess", "x_market_reference"]].to_numpy(np.float64)
            np.testing.assert_allclose(got, np.float32([market, mine, btc]), rtol=1e-5, atol=1e-7, err_msg=str(i))


def user_columns_frame(bars: pd.DataFrame) -> pd.DataFrame:
    """Two columns a researcher might bring, built from the real bars: a positive level and a signed flow."""
    volume = bars["volume"].to_numpy()
    return pd.DataFrame(
        {
            "open_time": bars["open_time"].to_numpy(),
            "oi": 1e6 + np.cumsum(volume),
            "flow": (bars["close"] - bars["open"]).to_numpy() * volume,
        }
    )


def test_user_column_transforms_equal_pandas(bars_30m) -> None:
    bars = bars_30m.iloc[:3000].reset_index(drop=True)
    columns = user_columns_frame(bars)
    specs = [
        {"name": "oi", "transform": "log_diff"},
        {"name": "flow", "transform": "zscore", "window": 48},
    ]
    cfg = build_section(FeatureConfig, {"columns": specs}, "features")
    table = build_features(bars, pd.DataFrame({"funding_time": [], "funding_rate": []}), cfg, 30, columns=columns)
    oi = np.log(columns["oi"] / columns["oi"].shift(1)).to_numpy()[1:]
    np.testing.assert_array_equal(table["x_user_oi"], oi.astype(np.float32))
    rolling = columns["flow"].rolling(48, min_periods=1)
    z = ((columns["flow"] - rolling.mean()) / rolling.std(ddof=0)).fillna(0.0).to_numpy()[1:]
    np.testing.assert_allclose(table["x_user_flow"], z, rtol=1e-4, atol=1e-5)


# --- tails: what the served model and the paper trader rely on --------------------------------------------------------


TAIL_CASES = {
    "funding": {"funding": {"channels": ["last", "mean", "zscore", "to_next", "paid_24h"], "zscore_settlements": 12}},
    "premium": {"premium": {"channels": ["last", "mean"], "mean_bars": 10}},
    "market": {"market": {"channels": ["return", "excess", "reference"], "lookback_bars": 6}},
}


@pytest.mark.parametrize("case", TAIL_CASES)
def test_a_tail_has_the_full_historys_channels_past_the_warmup(case: str) -> None:
    """Features from bars that start later (the funding, mark and market data as they are) equal the full history's
    bit for bit from row ``warmup``; the row before differs for some start."""
    cfg = config(TAIL_CASES[case])
    assets, _ = raws()
    raw = assets["ETHUSDT"]
    tables = at_timeframe(raw, cfg.features, 60)[0]
    bars = tables.bars.iloc[:1200]

    def build(start: int) -> pd.DataFrame:
        part = bars.iloc[start:].reset_index(drop=True)
        return build_features(part, raw.funding, cfg.features, 60, mark=tables.mark, market=market_60(), symbol="ETH")

    full = build(0)
    w = warmup_bars(cfg.features, 60)
    earlier_differs = []
    for start in (1, 205, 700):
        tail = build(start)
        got, want = tail.iloc[w - 1 :].reset_index(drop=True), full.iloc[start + w - 1 :].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_exact=True)
        earlier_differs.append(not tail.iloc[: w - 1].equals(full.iloc[start : start + w - 1].reset_index(drop=True)))
    assert any(earlier_differs), "the warm-up is longer than it needs to be"


def test_a_tail_of_user_columns_has_the_full_historys_channels(bars_30m) -> None:
    bars = bars_30m.iloc[:2000].reset_index(drop=True)
    columns = user_columns_frame(bars)
    specs = [{"name": "oi", "transform": "log_diff"}, {"name": "flow", "transform": "zscore", "window": 30}]
    cfg = build_section(FeatureConfig, {"columns": specs}, "features")
    none = pd.DataFrame({"funding_time": [], "funding_rate": []})
    full = build_features(bars, none, cfg, 30, columns=columns)
    w = warmup_bars(cfg, 30)
    for start in (1, 500):
        part = build_features(bars.iloc[start:], none, cfg, 30, columns=columns.iloc[start:])
        pd.testing.assert_frame_equal(
            part.iloc[w - 1 :].reset_index(drop=True), full.iloc[start + w - 1 :].reset_index(drop=True)
        )


# --- the mirror ------------------------------------------------------------------------------------------------------


def test_mirror_rules_of_the_new_channels_hold_on_the_reflected_market() -> None:
    """Prices reflected (P -> c²/P: bars, mark bars, every market asset) and funding negated: each new channel is its
    family's sign times the original."""
    cfg = config()
    raw = raws()[0]["SOLUSDT"]
    tables = at_timeframe(raw, cfg.features, 60)[0]

    def reflect(bars: pd.DataFrame) -> pd.DataFrame:
        c = float(bars["close"].median())
        out = bars.copy()
        out["open"], out["close"] = c**2 / bars["open"], c**2 / bars["close"]
        out["high"], out["low"] = c**2 / bars["low"], c**2 / bars["high"]
        return out

    original = build_features(tables.bars, raw.funding, cfg.features, 60, mark=tables.mark, market=market_60())
    negated = raw.funding.assign(funding_rate=-raw.funding["funding_rate"])
    c = float(tables.bars["close"].median())  # the mark bars reflect about the same price as the bars
    mark = tables.mark.assign(close=c**2 / tables.mark["close"])
    market = {s: reflect(b) for s, b in market_60().items()}
    reflected = build_features(reflect(tables.bars), negated, cfg.features, 60, mark=mark, market=market)
    names = feature_names(cfg.features, False)
    perm, sign = mirror_spec(names, cfg.features)
    x, xr = original.filter(like="x_").to_numpy(np.float64), reflected.filter(like="x_").to_numpy(np.float64)
    new = [i for i, n in enumerate(names) if n.startswith(("funding_", "premium_", "market_"))]
    assert len(new) == 10
    np.testing.assert_allclose(xr[:, new], (sign * x[:, perm])[:, new], rtol=1e-4, atol=2e-6)
    assert sign[names.index("funding_to_next")] == 1 and sign[names.index("funding_last")] == -1


def test_user_columns_mirror_as_declared() -> None:
    specs = [{"name": "oi"}, {"name": "flow", "mirror": "negate"}]
    cfg = build_section(FeatureConfig, {"columns": specs}, "features")
    _, sign = mirror_spec(["close", "user_oi", "user_flow"], cfg)
    np.testing.assert_array_equal(sign, [-1, 1, -1])
    with pytest.raises(ConfigError, match="no mirror rule for feature 'user_other'"):
        mirror_spec(["user_other"], cfg)


# --- refused inputs ---------------------------------------------------------------------------------------------------


def test_premium_without_mark_bars_is_refused_naming_the_symbol_and_the_key() -> None:
    premium = {"premium": ALL_CHANNELS["premium"]}
    cfg = from_dict({"data": {"symbol": "DOGEUSDT", "timeframe_minutes": 60}, "features": premium})
    raw = load_source(cfg.data, REPO, mark=True)  # DOGE ships no mark-price bars
    tables = at_timeframe(raw, cfg.features, 60)[0]
    with pytest.raises(ConfigError, match=r"features\.premium\.channels \['last', 'mean'\]: DOGEUSDT has no mark"):
        build_features(tables.bars, raw.funding, cfg.features, 60, symbol="DOGEUSDT")


def test_a_bar_without_its_mark_bar_is_refused_naming_it() -> None:
    cfg = config({"premium": {"channels": ["last"]}}, start="2023-12-31")  # the mark bars start on 2024-01-01
    raw = load_source(cfg.data, REPO, "BTCUSDT", mark=True)
    tables = at_timeframe(raw, cfg.features, 60)[0]
    with pytest.raises(DataError, match=r"BTCUSDT has no mark-price bar for 24 of .* the first opening 2023-12-31"):
        build_features(tables.bars, raw.funding, cfg.features, 60, mark=tables.mark, symbol="BTCUSDT")


def test_a_market_of_one_asset_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"features\.market\.channels \['return'\] need a market of two or more"):
        from_dict({"features": {"market": {"channels": ["return"]}}})
    cfg = from_dict({"features": {"market": {"channels": ["return"], "symbols": ["universe"]}}})
    assert len(cfg.features.market.symbols) == 12  # the one-asset chain names its market


def write_user_file(folder: Path, bars: pd.DataFrame, **columns: object) -> Path:
    frame = bars.assign(open_time=to_ms(bars["open_time"]), **columns)
    path = folder / "bars.csv"
    frame.to_csv(path, index=False)
    return path


def file_cfg(path: Path, *specs: dict) -> object:
    return from_dict(
        {"data": {"source": "file", "path": str(path), "start": None}, "features": {"columns": list(specs)}}
    )


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"oi": [1.0, 2.0, np.nan, 4.0]}, r"column oi is NaN or infinite at row\(s\) 2"),
        ({"oi": ["1", "2", "3", "four"]}, r"column oi is not a number at row\(s\) 3 \(e\.g\. 'four'\)"),
        ({"open_interest": [1.0, 2.0, 3.0, 4.0]}, r"features\.columns declares column\(s\) \['oi'\], which the file"),
        ({"oi": [1.0, 0.0, 3.0, 4.0]}, r"column oi is zero or negative at row\(s\) 1; its transform log_diff"),
    ],
    ids=["nan", "text", "missing", "not_positive"],
)
def test_bad_user_columns_are_refused_naming_file_row_and_column(
    tmp_path: Path, bars_30m, values: dict, match: str
) -> None:
    path = write_user_file(tmp_path, bars_30m.iloc[:4], **values)
    cfg = file_cfg(path, {"name": "oi", "transform": "log_diff"})
    with pytest.raises(DataError, match=match) as err:
        load_source(cfg.data, tmp_path, columns=tuple(cfg.features.columns))
    assert str(path) in str(err.value)


def test_an_undeclared_extra_column_is_refused_and_declared_ones_are_read(tmp_path: Path, bars_30m) -> None:
    bars = bars_30m.iloc[:48]
    path = write_user_file(tmp_path, bars, oi=np.arange(48.0) + 1, note=np.zeros(48))
    cfg = file_cfg(path, {"name": "oi"})
    with pytest.raises(DataError, match=r"unexpected column\(s\) \['note'\]; declare those the policy should see"):
        load_source(cfg.data, tmp_path, columns=tuple(cfg.features.columns))
    path = write_user_file(tmp_path, bars, oi=np.arange(48.0) + 1)
    raw = load_source(cfg.data, tmp_path, columns=tuple(cfg.features.columns))
    assert list(raw.columns.columns) == ["open_time", "oi"] and raw.columns["oi"].iloc[-1] == 48.0
    assert raw.columns["open_time"].equals(raw.bars["open_time"])


def test_user_columns_aggregate_as_a_level_or_a_flow(tmp_path: Path, bars_30m) -> None:
    """5-minute user columns at 30 minutes: ``last`` keeps the bucket's last value, ``sum`` adds it up."""
    from tests.data.real_data import _bars_5m

    bars = _bars_5m().iloc[:60]
    path = write_user_file(tmp_path, bars, oi=np.arange(60.0) + 1, flow=np.ones(60))
    cfg = from_dict(
        {
            "data": {"source": "file", "path": str(path), "start": None, "timeframe_minutes": 30},
            "features": {"columns": [{"name": "oi"}, {"name": "flow", "aggregate": "sum"}]},
        }
    )
    raw = load_source(cfg.data, tmp_path, columns=tuple(cfg.features.columns))
    tables = at_timeframe(raw, cfg.features, 30)[0]
    assert tables.columns["oi"].tolist() == [6.0 * i for i in range(1, 11)]
    assert tables.columns["flow"].tolist() == [6.0] * 10
    table = build_features(tables.bars, raw.funding, cfg.features, 30, columns=tables.columns)
    assert table["x_user_oi"].tolist() == [6.0 * i for i in range(2, 11)]


def test_user_columns_need_the_file_source_and_a_window_for_zscore() -> None:
    with pytest.raises(ConfigError, match=r"features\.columns \['oi'\]: the user's own columns come from data"):
        from_dict({"features": {"columns": [{"name": "oi"}]}})
    with pytest.raises(ConfigError, match=r"features\.columns\[0\]\.window is 0: a zscore needs"):
        from_dict(
            {
                "data": {"source": "file", "path": "x.csv"},
                "features": {"columns": [{"name": "oi", "transform": "zscore"}]},
            }
        )
    assert UserColumn().transform == "raw"
