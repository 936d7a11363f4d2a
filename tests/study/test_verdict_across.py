"""The verdict beyond one study: Benjamini-Hochberg over the studies' p-values, the studies' headline books on one
clock, SPA across studies, the compare stage reading the headline tracks back from a throwaway MLflow store, and the
registry's SPA gate (off by default)."""

from __future__ import annotations

import math

import mlflow
import numpy as np
import pandas as pd
import pytest

from diffquant import tracking
from diffquant.config import RegistryConfig, from_dict
from diffquant.deploy.gates import judge_tracks
from diffquant.errors import ConfigError
from diffquant.evaluate.metric_names import study_metric, verdict_metric
from diffquant.io import write_csv
from diffquant.study.across import across_studies, benjamini_hochberg, common_clock
from diffquant.study.verdict import NOT_COMPUTABLE
from stages import compare

HOUR = 24 * 365


def test_benjamini_hochberg_matches_the_hand_computation_and_leaves_gaps():
    p = pd.Series([0.01, 0.04, np.nan, 0.03])
    # sorted 0.01, 0.03, 0.04 of m = 3: 0.03, 0.045, 0.04, made monotone from the top: 0.03, 0.04, 0.04
    np.testing.assert_allclose(benjamini_hochberg(p).to_numpy(), [0.03, 0.04, np.nan, 0.04])
    assert benjamini_hochberg(pd.Series([np.nan])).isna().all()


def book(times: pd.DatetimeIndex, rng: np.random.Generator, edge: float = 0.0) -> pd.DataFrame:
    hold = rng.normal(0.0, 0.01, len(times))
    return pd.DataFrame({"time": times, "book": 0.9 * hold + rng.normal(edge, 0.004, len(times)), "benchmark": hold})


def test_common_clock_compounds_finer_bars_and_keeps_the_bars_every_study_has():
    half_hours = pd.date_range("2024-01-01", periods=8, freq="30min", tz="UTC")
    hours = pd.date_range("2024-01-01 01:00", periods=6, freq="h", tz="UTC")
    fine = pd.DataFrame({"time": half_hours, "book": 0.01, "benchmark": 0.0})
    coarse = pd.DataFrame({"time": hours, "book": 0.0, "benchmark": 0.02})
    diffs, minutes = common_clock({"fine": fine, "coarse": coarse})
    assert minutes == 60 and list(diffs.index) == list(hours[:3])  # the fine study ends at 03:30
    np.testing.assert_allclose(diffs["fine"], 1.01**2 - 1.0)  # two half hours compounded
    np.testing.assert_allclose(diffs["coarse"], -0.02)


def test_spa_across_studies_names_the_one_with_an_edge_and_states_what_it_can_not_judge():
    rng = np.random.default_rng(2)
    times = pd.date_range("2024-01-01", periods=2 * HOUR, freq="h", tz="UTC")
    books = {"plain": book(times, rng), "edge": book(times, rng, 3e-4), "other": book(times, rng)}
    result = across_studies(books, reps=300)
    assert result["spa"]["stepm"] == ["edge"] and result["spa"]["consistent"] < 0.01
    assert result["bars"] == len(times) and result["block_bars"] == 24
    assert NOT_COMPUTABLE in across_studies({"edge": books["edge"]})
    far = book(pd.date_range("2025-06-01", periods=30, freq="h", tz="UTC"), rng)
    short = across_studies({"plain": books["plain"], "far": far})
    assert short[NOT_COMPUTABLE].startswith("on the 30 bars the studies share: ")
    assert "fewer than two bootstrap blocks of 24 bars" in short[NOT_COMPUTABLE]


def _study_run(root, name: str, kind: str, spa_p: float, track: pd.DataFrame | None) -> str:
    run = tracking.start_run(root, name, {"role": "study", "symbols": "BTCUSDT,ETHUSDT"})
    run.log_params({"model.kind": kind})
    headline = ("universe", "policy") if kind == "single" else ("portfolio", "portfolio")
    run.log_metrics({study_metric(*headline, "sharpe"): 0.5, verdict_metric("spa_p"): spa_p})
    run.set_tags({"verdict.mcs": "policy,buy_and_hold"})
    if track is not None:
        path = root / "tracks" / name / f"{headline[0]}.csv"
        write_csv(path, track)
        run.log_artifact(path, "study")
    return run.run_id


def test_compare_reads_the_headline_tracks_back_and_runs_spa_across_studies(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rng = np.random.default_rng(4)
    times = pd.date_range("2024-01-01", periods=HOUR, freq="h", tz="UTC")
    single = book(times, rng).rename(columns={"book": "policy", "benchmark": "buy_and_hold"})
    portfolio = book(times, rng, 4e-4).rename(columns={"book": "portfolio", "benchmark": "equal_weight"})
    try:
        _study_run(tmp_path, "old", "single", math.nan, None)  # judged before the verdict: no track, no p-value
        _study_run(tmp_path, "single", "single", 0.04, single.assign(fold="f1", momentum=0.0))
        _study_run(tmp_path, "book", "portfolio", 0.01, portfolio)
        compare.main(["--out", "compare", "--metrics", "compare.json"])
    finally:
        mlflow.set_tracking_uri(None)
    studies = pd.read_csv(tmp_path / "compare" / "compare.csv").set_index("run")
    assert studies.loc["book", "spa_p_bh"] == pytest.approx(0.02) and studies.loc["single", "spa_p_bh"] == 0.04
    assert math.isnan(studies.loc["old", "spa_p_bh"]) and studies.loc["book", "mcs"] == "policy,buy_and_hold"
    text = (tmp_path / "compare" / "compare.md").read_text()
    assert "## Across studies" in text and "StepM names `book#" in text  # only the portfolio has an edge
    assert "of the 2 studies' headline books" in text  # the old study has no track to read back


def test_the_spa_gate_is_off_by_default_and_needs_the_p_value_below_its_threshold():
    entry = {"psr": 0.99, "dsr": 0.99, "sharpe_minus_benchmark_ci_low": 0.1}
    assert [g.key for g in judge_tracks({"BTC": entry}, RegistryConfig(), spa_p=0.9)["BTC"]] == [
        "psr",
        "dsr",
        "beats_buy_and_hold",
    ]
    strict = RegistryConfig(max_spa_p=0.05)
    passed = judge_tracks({"BTC": entry}, strict, spa_p=0.01)["BTC"][-1]
    assert passed.key == "spa" and passed.passed and "0.010 < 0.05" in passed.describe()
    failed = judge_tracks({"BTC": entry}, strict, "1/N", spa_p=0.2)["BTC"][-1]
    assert not failed.passed and "0.200 is not < 0.05" in failed.describe() and "1/N" in failed.label
    assert not judge_tracks({"BTC": entry}, strict, spa_p=None)["BTC"][-1].passed  # not computable fails
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match=r"registry\.max_spa_p"):
            from_dict({"registry": {"max_spa_p": bad}})
