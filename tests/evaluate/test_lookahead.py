"""Look-ahead check: the shipped presets pass, planted leaks (features and a policy that peeks) are named, the CLI's
exit codes."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import Tensor

from diffquant.config import Config, FeatureConfig, Hysteresis, ModelConfig, load
from diffquant.data.sources import RawData
from diffquant.errors import ConfigError
from diffquant.evaluate import lookahead
from diffquant.evaluate.lookahead import SourceData, check_lookahead, parse_cuts, pipeline_builder
from diffquant.evaluate.member import Member
from diffquant.io import write_parquet
from diffquant.model.policy import PolicyNetwork
from diffquant.study.newest_policies import policy_checkpoint
from diffquant.train import checkpoint
from stages import lookahead as stage
from stages._cli import run_stage
from tests.data.real_data import fixture_bars_5m, fixture_funding  # noqa: F401  (registers the fixtures)
from tests.repo_copy import tiny_params

CTX = 32
SLICE = 20 * 288  # 20 days of 5-minute bars
ALL_ON = {"typical_price": True, "rolling_vol": True, "time_features": True}
TINY_MODEL = ModelConfig(
    itransformer=dataclasses.replace(ModelConfig().itransformer, d_model=8, n_layers=1, d_ff=16),
    head=dataclasses.replace(ModelConfig().head, dense=[8]),
)


def config(**features: object) -> Config:
    """Default params with a 32-bar window (cuts fit a 20-day slice) and the given feature settings."""
    cfg = Config()
    return dataclasses.replace(
        cfg, window=dataclasses.replace(cfg.window, context=CTX), features=FeatureConfig(**features), model=TINY_MODEL
    )


@pytest.fixture(scope="module")
def real(bars_5m: pd.DataFrame, funding: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """20 days of the shipped 5-minute bars (from 2025-02-20) and all funding events."""
    first = int(np.searchsorted(bars_5m["open_time"], pd.Timestamp("2025-02-20", tz="UTC")))
    return bars_5m.iloc[first : first + SLICE].reset_index(drop=True), funding


def source(bars: pd.DataFrame, funding: pd.DataFrame) -> SourceData:
    """5-minute BTC bars and funding as the check's source data."""
    return SourceData(RawData(bars, funding, {"source_minutes": 5, "symbol": "BTCUSDT"}))


def policy(n_features: int, cls: type[PolicyNetwork] = PolicyNetwork, name: str = "untrained") -> Member:
    """A small untrained policy (its decisions are as sensitive to its inputs as a trained one's)."""
    torch.manual_seed(0)
    return Member(name, cls(TINY_MODEL, n_features, CTX), Hysteresis(0.02, 0.02, 0.01, 0.0))


@pytest.mark.parametrize("preset", ["ohlc", "ohlcv", "full"])
def test_shipped_presets_pass(real: tuple[pd.DataFrame, pd.DataFrame], preset: str) -> None:
    bars, funding = real
    if preset == "full":  # the bundled bars have no trade counts: a plausible stand-in
        bars = bars.assign(num_trades=np.round(bars["volume"] * 37.0))
    cfg = config(preset=preset, **ALL_ON)
    n_features = len(pipeline_builder(cfg)(source(bars.iloc[:60], funding)).columns) - 3
    report = check_lookahead(source(bars, funding), cfg, [policy(n_features)], n_cuts=3)
    assert report.ok, report.summary()
    assert len(report.cuts) == 3 and "dow_cos" in report.features and "typical_price" in report.features
    assert {c.variant for c in report.checks} == {"altered", "truncated"}
    assert any(c.what == "untrained executed position (hysteresis)" for c in report.checks)
    assert all(c.compared >= 4 * CTX - 1 for c in report.checks if c.what.startswith("feature"))


def peek_next_close(t: pd.DataFrame) -> pd.Series:
    return np.log(t["close"].shift(-1) / t["close"]).fillna(0.0)


def centred_mean(t: pd.DataFrame) -> pd.Series:
    return t["x_close"].rolling(9, center=True, min_periods=1).mean()


def whole_column_zscore(t: pd.DataFrame) -> pd.Series:
    return (t["x_volume"] - t["x_volume"].mean()) / t["x_volume"].std()


@pytest.mark.parametrize(
    ("leak", "ahead"),
    [(peek_next_close, 1), (centred_mean, 4), (whole_column_zscore, None)],
    ids=["next_close", "centred_window", "whole_column_zscore"],
)
def test_planted_leaky_feature_is_named(real: tuple[pd.DataFrame, pd.DataFrame], leak, ahead: int | None) -> None:
    bars, funding = real
    cfg = config(preset="ohlcv")
    honest = pipeline_builder(cfg)

    def leaky(data: SourceData) -> pd.DataFrame:
        table = honest(data)
        table["x_peek"] = leak(table).astype(np.float32)
        return table

    report = check_lookahead(source(bars, funding), cfg, [policy(7)], n_cuts=2, build=leaky)
    assert not report.ok
    features = {c.what for c in report.leaks if c.what.startswith("feature")}
    assert features == {"feature peek"}, report.summary()
    for cut in report.cuts:
        for variant in ("altered", "truncated"):
            (found,) = [c for c in report.leaks if (c.cut, c.variant, c.what) == (cut, variant, "feature peek")]
            if ahead is not None:  # the bars within ``ahead`` of the cut read data after it
                assert found.bars_before_cut == ahead - 1 and found.changed == ahead
        decisions = [c for c in report.leaks if c.cut == cut and c.what == "untrained raw decision"]
        assert decisions and decisions[0].variant == "altered"
    assert "feature peek changed at 2 of 2 cut(s) (altered, truncated)" in report.summary()


class PeekingPolicy(PolicyNetwork):
    """Subtracts the mean logit of its batch: every decision sees the windows after it."""

    def encode_channel_major(self, windows: Tensor) -> Tensor:
        logits = super().encode_channel_major(windows)
        return logits - logits.mean(dim=0, keepdim=True)


def test_causal_policy_passes_and_a_peeking_policy_is_caught(real: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    bars, funding = real
    cfg = config(preset="ohlcv")
    policies = [policy(6, name="causal"), policy(6, PeekingPolicy, name="peeking")]
    report = check_lookahead(source(bars, funding), cfg, policies, n_cuts=2)
    causal = [c for c in report.checks if c.what.startswith("causal")]
    assert len(causal) == 2 * 5 and not any(c.leaks for c in causal)  # bit-identical: tolerance 0 holds
    leaked = {c.what for c in report.leaks}
    assert {"peeking raw decision", "peeking gate"} <= leaked and all(w.startswith("peeking") for w in leaked)
    first = [c for c in report.leaks if c.what == "peeking raw decision"]
    assert len(first) == 2 and all(c.bars_before_cut == 3 * CTX - 1 for c in first)  # its very first decision


def test_cuts_are_parsed_floored_and_refused_outside_the_data(real: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    bars, funding = real
    cfg = config(preset="ohlc")
    cuts = parse_cuts("2025-03-01T00:10, 2025-03-02T12:00+01:00")
    report = check_lookahead(source(bars, funding), cfg, cuts=cuts)
    assert report.ok and report.cuts == ["2025-03-01T00:00Z", "2025-03-02T11:00Z"]
    with pytest.raises(ConfigError, match="outside the usable data"):
        check_lookahead(source(bars, funding), cfg, cuts=parse_cuts("2025-02-20T12:00"))
    with pytest.raises(ConfigError, match="not a time"):
        parse_cuts("March")


def test_altered_bars_differ_after_the_cut_only(real: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    bars = real[0].iloc[:600].reset_index(drop=True)
    cut = int(bars["open_time"].iloc[300].value // 1_000_000)  # the bar opening at the cut is the first altered
    altered = lookahead.alter_bars_after(bars, cut, 5, np.random.default_rng(0))
    cols = ["open", "high", "low", "close", "volume"]
    assert altered.iloc[:300][cols].equals(bars.iloc[:300][cols])
    assert (altered.iloc[300:][cols].to_numpy() != bars.iloc[300:][cols].to_numpy()).all(axis=1).mean() > 0.95
    assert altered["open_time"].equals(bars["open_time"])


# ---- the stage -------------------------------------------------------------------------------------------------


EXPLICIT = ["--models", "models", "--thresholds", "thresholds.json"]  # a group's seeds, no tuned thresholds


@pytest.fixture
def workspace(tmp_path: Path, real: tuple[pd.DataFrame, pd.DataFrame], monkeypatch: pytest.MonkeyPatch) -> Path:
    """params (a 32-bar window, one tiny seed), the download stage's files and one untrained 'best' checkpoint."""
    bars, funding = real
    params = tiny_params(window={"context": CTX}, baselines={"momentum_lookbacks": [12, 24]})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    raw = tmp_path / "data_source" / "raw" / "BTCUSDT"
    write_parquet(bars, raw / "bars.parquet")
    write_parquet(funding, raw / "funding.parquet")
    (raw / "meta.json").write_text(json.dumps({"source": "bundled", "symbol": "BTCUSDT", "source_minutes": 5}))
    cfg = load(tmp_path / "params.yaml")
    torch.manual_seed(0)
    model = PolicyNetwork(cfg.model, 6, CTX)
    spec = checkpoint.policy_spec(cfg.model, ["open", "high", "low", "close", "volume", "rolling_vol"], CTX)
    path = policy_checkpoint(tmp_path / "models", cfg.train.seeds[0], cfg)
    checkpoint.save(path, {"spec": {"policy": spec}, "model_state": model.state_dict()})
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("DVC_STAGE", raising=False)
    return tmp_path


def test_stage_passes_then_exits_1_on_a_leak_naming_it(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stage.main([*EXPLICIT, "--n-cuts", "2"]) == 0
    report = json.loads((workspace / "outputs" / "lookahead" / "report.json").read_text())
    assert report["ok"] and report["policies"] == ["seed_42"] and report["leaks"] == []
    assert any("trade eval.hysteresis" in n for n in report["notes"])  # no thresholds file here
    assert "OK: nothing at or before a cut changed" in capsys.readouterr().out

    honest = lookahead.features_from_inputs

    def next_close(*args: object) -> pd.DataFrame:  # overwrites a channel: the checkpoint still fits
        table = honest(*args)
        table["x_close"] = np.log(table["close"].shift(-1) / table["close"]).fillna(0.0).astype(np.float32)
        return table

    monkeypatch.setattr(lookahead, "features_from_inputs", next_close)
    assert stage.main([*EXPLICIT, "--n-cuts", "2"]) == 1
    out = capsys.readouterr().out
    assert "LEAK" in out and "seed_42 raw decision changed at 2 of 2 cut(s) (altered)" in out
    assert (
        "feature close changed at 2 of 2 cut(s) (altered, truncated): up to 1 of 127 bars per cut, only the bar "
        "closing at the cut" in out
    )
    report = json.loads((workspace / "outputs" / "lookahead" / "report.json").read_text())
    assert not report["ok"] and {leak["what"] for leak in report["leaks"]} >= {"feature close", "seed_42 gate"}


def test_stage_without_checkpoints_checks_features_and_refuses_missing_data(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stage.main(["--models", "nowhere", "--thresholds", "none.json", "--cuts", "2025-03-01T00:00"]) == 0
    assert "policies skipped: no best.pt under" in capsys.readouterr().out
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_stage(lambda: sys.exit(stage.main(["--raw", "missing"])))
    finally:
        torch.set_flush_denormal(False)  # run_stage turns it on for the process
    assert exit_info.value.code == 2
