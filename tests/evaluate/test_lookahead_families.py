"""The look-ahead check over every feature family, on real shipped data (three assets with mark-price bars, 1 hour):
each new channel and a policy reading them stay bit-identical at and before a cut when the bars, funding, mark bars,
the other assets' bars and the user's columns after it are altered (or cut off); a planted leak in each family is
named; ``python -m stages.lookahead`` reads the download stage's folder of a families run and exits 1 on a leak."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from diffquant.config import Config, Hysteresis, ModelConfig, WindowConfig, from_dict
from diffquant.data.contracts import to_ms
from diffquant.data.families import FAMILIES, FeatureInputs
from diffquant.data.features import feature_columns
from diffquant.evaluate import lookahead
from diffquant.evaluate.lookahead import SourceData, check_lookahead
from diffquant.evaluate.member import Member
from diffquant.model.policy import PolicyNetwork
from stages import download
from stages import lookahead as stage
from tests.data.families_data import ALL_CHANNELS, SYMBOLS, raws
from tests.repo_copy import REPO, tiny_params

CTX = 24
COLUMNS = [{"name": "oi", "transform": "log_diff"}, {"name": "flow", "transform": "zscore", "window": 12}]
TINY_MODEL = ModelConfig(
    itransformer=dataclasses.replace(ModelConfig().itransformer, d_model=8, n_layers=1, d_ff=16),
    head=dataclasses.replace(ModelConfig().head, dense=[8]),
)


def every_family() -> Config:
    """Every family on: funding, premium and market from the shipped data, user columns built on ETH's bars."""
    features = {**ALL_CHANNELS, "columns": COLUMNS}
    cfg = from_dict(
        {
            "data": {"source": "file", "path": "-", "symbols": SYMBOLS, "timeframe_minutes": 60},
            "features": features,
        }
    )
    return dataclasses.replace(cfg, window=WindowConfig(context=CTX, horizon=8, stride=8), model=TINY_MODEL)


@pytest.fixture(scope="module")
def data() -> SourceData:
    """ETH's source data from 2025-07-01 (bars, funding, mark bars) with two user columns, and the market."""
    assets, market = raws()
    eth = assets["ETHUSDT"]
    bars = eth.bars.iloc[: 60 * 24].reset_index(drop=True)
    columns = pd.DataFrame(
        {
            "open_time": bars["open_time"].to_numpy(),
            "oi": 1e6 + np.cumsum(bars["volume"].to_numpy()),
            "flow": ((bars["close"] - bars["open"]) * bars["volume"]).to_numpy(),
        }
    )
    raw = dataclasses.replace(eth, bars=bars, columns=columns)
    return SourceData(raw, {s: raw if s == "ETHUSDT" else r for s, r in market.items()})


def policy(n_features: int) -> Member:
    torch.manual_seed(0)
    return Member("untrained", PolicyNetwork(TINY_MODEL, n_features, CTX), Hysteresis(0.02, 0.02, 0.01, 0.0))


NEW = ("funding_", "premium_", "market_", "user_")


def test_every_family_passes_with_a_policy_reading_it(data: SourceData) -> None:
    cfg = every_family()
    names = feature_columns(lookahead.pipeline_builder(cfg)(data))
    assert sum(n.startswith(NEW) for n in names) == 12
    report = check_lookahead(data, cfg, [policy(len(names))], n_cuts=3)
    assert report.ok, report.summary()
    checked = {c.what for c in report.checks}
    assert {f"feature {n}" for n in names if n.startswith(NEW)} <= checked
    assert "untrained walk-forward net return" in checked
    assert {c.variant for c in report.checks} == {"altered", "truncated"}


def test_the_alteration_changes_every_input_after_the_cut_and_nothing_before(data: SourceData) -> None:
    cut = int(to_ms(data.raw.bars["open_time"])[700])  # the bar opening at the cut closes after it
    altered = lookahead.alter_after(data, cut, np.random.default_rng(1))

    def split(before: pd.DataFrame, after: pd.DataFrame, stamp: str, cols: list[str]) -> tuple[bool, float]:
        early = to_ms(before[stamp]) < cut if stamp == "open_time" else to_ms(before[stamp]) <= cut
        same = before[early][cols].equals(after[early][cols])
        moved = (before[~early][cols].to_numpy() != after[~early][cols].to_numpy()).any(axis=1).mean()
        return same, moved

    prices = ["open", "high", "low", "close"]
    tables = {
        "bars": (data.raw.bars, altered.raw.bars, "open_time", prices),
        "funding": (data.raw.funding, altered.raw.funding, "funding_time", ["funding_rate"]),
        "mark": (data.raw.mark, altered.raw.mark, "open_time", prices),
        "columns": (data.raw.columns, altered.raw.columns, "open_time", ["oi", "flow"]),
        **{s: (data.market[s].bars, altered.market[s].bars, "open_time", prices) for s in SYMBOLS},
    }
    for name, (before, after, stamp, cols) in tables.items():
        same, moved = split(before, after, stamp, cols)
        assert same and moved > 0.95, name
    assert altered.market["ETHUSDT"] is altered.raw  # the asset's own bars are altered once


def shifted(table: pd.DataFrame) -> pd.DataFrame:
    """A bar table whose close at t is the next bar's (the last bar keeps its own)."""
    return table.assign(close=table["close"].shift(-1).fillna(table["close"]))


PEEKS: dict[str, Callable[[FeatureInputs], FeatureInputs]] = {
    # the next settlement known one interval (8 bars) early: within reach of every cut, whatever its hour
    "funding": lambda i: dataclasses.replace(
        i, funding_rate=np.r_[i.funding_rate[8:], np.zeros(8)], settlements=np.r_[i.settlements[8:], np.zeros(8, int)]
    ),
    "premium": lambda i: dataclasses.replace(i, mark=shifted(i.mark)),
    "market": lambda i: dataclasses.replace(i, market={s: shifted(b) for s, b in i.market.items()}),
    "columns": lambda i: dataclasses.replace(i, columns=i.columns.assign(oi=i.columns["oi"].shift(-1).bfill())),
}


@pytest.mark.parametrize("family", PEEKS)
def test_a_planted_leak_in_each_family_is_named(data: SourceData, family: str, monkeypatch) -> None:
    """The family reads its input one bar ahead (the rest of the pipeline unchanged): the check names its channels,
    and only those."""
    (target,) = [f for f in FAMILIES if f.name == family]
    honest = target.build
    monkeypatch.setattr(target, "build", lambda inputs, cfg, tf: honest(PEEKS[family](inputs), cfg, tf))
    report = check_lookahead(data, every_family(), n_cuts=2)
    assert not report.ok
    leaked = {c.what.removeprefix("feature ") for c in report.leaks}
    own = set(target.channels(every_family().features, False))
    assert leaked and leaked <= own, report.summary()
    assert all(f"feature {n} changed at 2 of 2 cut(s)" in report.summary() for n in leaked)


def test_stage_checks_the_families_of_a_download_and_names_a_leak(
    tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """download (bundled ETH with its mark bars and a three-asset market) -> the stage: exit 0; with the market
    family peeking one bar ahead: exit 1, the channels named."""
    features = {key: ALL_CHANNELS[key] for key in ("funding", "premium", "market")}
    features["market"] = {**features["market"], "symbols": SYMBOLS}
    params = tiny_params(
        data={"symbol": "ETHUSDT", "timeframe_minutes": 60, "start": "2025-11-01"},
        features=features,
        window={"context": CTX},
        baselines={"momentum_lookbacks": [6, 12]},
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("DVC_ROOT", str(REPO))  # the shipped data; every output goes to tmp_path
    monkeypatch.delenv("DVC_STAGE", raising=False)
    raw, out = tmp_path / "raw", tmp_path / "report.json"
    download.main(["--params", str(tmp_path / "params.yaml"), "--out", str(raw), "--metrics", str(tmp_path / "d.json")])
    assert (raw / "ETHUSDT" / "mark.parquet").is_file()
    assert sorted(p.name for p in (raw / "market").iterdir()) == sorted(SYMBOLS)
    args = ["--params", str(tmp_path / "params.yaml"), "--raw", str(raw), "--out", str(out), "--n-cuts", "2"]
    assert stage.main([*args, "--features-only"]) == 0
    report = json.loads(out.read_text())
    assert report["ok"] and "market_excess" in report["features"] and "premium_mean" in report["features"]

    (market,) = [f for f in FAMILIES if f.name == "market"]
    honest = market.build
    monkeypatch.setattr(market, "build", lambda inputs, cfg, tf: honest(PEEKS["market"](inputs), cfg, tf))
    assert stage.main([*args, "--features-only"]) == 1
    printed = capsys.readouterr().out
    assert "LEAK" in printed and "feature market_return changed at 2 of 2 cut(s)" in printed
