"""The benchmark study's plan and judgement: configurations, overrides, the ranking on val, study-wide DSR and PBO,
and one configuration run (cached folds, its epoch time) and written up."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from diffquant.config import Config, from_dict, with_overrides
from diffquant.errors import ConfigError
from diffquant.evaluate.stats import expected_max_sharpe
from diffquant.study.zoo import (
    Configuration,
    Entry,
    backbone_entries,
    best_entries,
    describe,
    judge_study,
    loss_entries,
    run_configuration,
    zoo_markdown,
)


def test_phase_one_is_every_backbone_and_each_series_path_with_the_hybrid():
    names = [e.name for e in backbone_entries()]
    assert names == [
        "itransformer_hybrid",
        "lstm_hybrid",
        "patchtst_hybrid",
        "dlinear_hybrid",
        "tcn_hybrid",
        "vsn_lstm_hybrid",
        "linear_attention_hybrid",
        "tcn-series_hybrid",
        "vsn_lstm-series_hybrid",
        "linear_attention-series_hybrid",
    ]
    for entry in backbone_entries():  # every configuration is valid params
        from_dict(with_overrides({}, entry.overrides()))


def test_phase_two_is_every_other_loss_of_the_chosen_backbones():
    best = [Entry("tcn", True, "hybrid"), Entry("dlinear", False, "hybrid")]
    names = [e.name for e in loss_entries(best)]
    losses = ["sharpe", "sortino", "calmar", "cdar", "hybrid-regime"]
    assert names == [f"tcn-series_{x}" for x in losses] + [f"dlinear_{x}" for x in losses]
    cfg = from_dict(with_overrides({}, loss_entries(best)[4].overrides()))
    assert (cfg.model.backbone, cfg.model.series, cfg.loss.type, cfg.loss.regime_power) == ("tcn", True, "hybrid", 1.0)


def test_with_overrides_sets_dotted_keys_on_a_copy():
    raw = {"loss": {"type": "hybrid"}, "seed": 1}
    out = with_overrides(raw, {"loss.type": "cdar", "model.series": True, "seed": 2})
    assert out == {"loss": {"type": "cdar"}, "model": {"series": True}, "seed": 2}
    assert raw == {"loss": {"type": "hybrid"}, "seed": 1}
    with pytest.raises(ConfigError, match="seed is not a section"):
        with_overrides(raw, {"seed.x": 1})


def _configuration(name: str, net: np.ndarray, score: float, trials: int) -> Configuration:
    time = pd.date_range("2025-10-01", periods=len(net), freq="h")
    seeds = {f"policy_seed_{s}": net + 0.001 * np.sin(np.arange(len(net)) + s) for s in (42, 43)}
    universe = pd.DataFrame({"time": time, "policy": net, **seeds, "buy_and_hold": 0.5 * net, "fold": "f"})
    policy = {
        "sharpe": 1.0,
        "sharpe_ci_low": -1.0,
        "sharpe_ci_high": 3.0,
        "dsr": 0.5,
        "total_return_pct": 1.0,
        "max_drawdown_pct": 2.0,
    }
    tracks = {"universe": {"policy": policy, "buy_and_hold": {"sharpe": 0.2}, "n_trials": {"policy": trials}}}
    tracks["universe"]["bars"] = len(net)
    return Configuration(Entry(name, False, "hybrid"), "backbones", {"tracks": tracks}, universe, score, 0.1, 2.0)


def test_judge_study_deflates_by_every_configuration_and_ranks_on_val():
    gen = np.random.default_rng(0)
    configs = [_configuration(f"b{i}", 0.01 * gen.standard_normal(2000), s, 30) for i, s in enumerate([0.1, 2.0, 1.0])]
    assert [e.name for e in best_entries(configs)] == ["b1_hybrid", "b2_hybrid"]
    table, study = judge_study(configs, Config())
    assert study["n_trials"] == 90 and study["configurations"] == 3
    assert study["pbo"]["n_configurations"] == 3 and study["pbo"]["configurations"] == [c.entry.name for c in configs]
    # the null: 90 trials with the spread of all nine policy tracks (each configuration's ensemble and two seeds)
    ann = np.sqrt(24 * 365)
    tracks = [c.universe[k] for c in configs for k in ("policy", "policy_seed_42", "policy_seed_43")]
    sharpes = [np.mean(t) / np.std(t) * ann for t in tracks]
    expected = expected_max_sharpe(90, np.var(sharpes, ddof=1) / (24 * 365))
    assert study["null_sharpe_per_bar"] == pytest.approx(expected, rel=1e-9)
    assert list(table["configuration"]) == ["b0_hybrid", "b1_hybrid", "b2_hybrid"]
    assert table["dsr_study"].between(0, 1).all() and (table["dsr_own"] == 0.5).all()
    # the verdict over the configurations: SPA and StepM against buy-and-hold, the confidence set with it
    verdict = study["verdict"]
    assert 0.0 <= verdict["spa"]["consistent"] <= 1.0 and set(verdict["spa"]["stepm"]) <= set(table["configuration"])
    kept = set(verdict["mcs"]["included"])
    assert kept and kept <= {*table["configuration"], "buy_and_hold"}
    assert list(table["in_mcs"]) == [c in kept for c in table["configuration"]]
    assert "model confidence set (with buy-and-hold)" in zoo_markdown("size", study, [], table)


def test_a_configuration_that_clearly_beats_buy_and_hold_is_named_and_the_rest_left_out_of_the_set():
    gen = np.random.default_rng(1)
    noise = [0.01 * gen.standard_normal(4000) for _ in range(3)]
    noise[1] += 0.002  # a strong edge in mean return
    configs = [_configuration(f"b{i}", n, 0.0, 1) for i, n in enumerate(noise)]
    table, study = judge_study(configs, Config())
    assert study["verdict"]["spa"]["stepm"] == ["b1_hybrid"]
    assert list(table["in_mcs"]) == [False, True, False]


def test_judge_study_refuses_books_on_other_bars():
    a = _configuration("a", np.full(400, 0.001) + np.sin(np.arange(400)) * 0.01, 0.0, 1)
    b = _configuration("b", np.full(401, 0.001) + np.sin(np.arange(401)) * 0.01, 0.0, 1)
    with pytest.raises(ValueError, match="other bars"):
        judge_study([a, b], Config())


@pytest.mark.slow  # trains a tiny policy on one fold
def test_a_configuration_runs_its_folds_once_and_keeps_its_epoch_time(tmp_path):
    """A configuration's folds train once; run again, every fold comes from its cache and the epoch time from the
    first run's timing file, so the table's speed column survives a rerun that trains nothing."""
    from tests.study.test_fold_run import raw_until, tables, tiny

    cfg = tiny(**{"folds.last_test_end": "2024-05-01"})
    raws = {s: raw_until(s, "2024-05-02") for s in ("BTCUSDT", "ETHUSDT")}
    entry = Entry("itransformer", False, "hybrid")
    first = run_configuration(entry, "backbones", cfg, tables(cfg, raws), tmp_path, workers=0)
    stamp = (tmp_path / "2024-04-01" / "fold.json").stat().st_mtime_ns
    again = run_configuration(entry, "backbones", cfg, tables(cfg, raws), tmp_path, workers=0)
    assert (tmp_path / "2024-04-01" / "fold.json").stat().st_mtime_ns == stamp  # nothing trained again
    assert first.seconds_per_epoch is not None and again.seconds_per_epoch == first.seconds_per_epoch
    pd.testing.assert_frame_equal(again.universe, first.universe)
    assert again.summary["tracks"] == first.summary["tracks"]

    header = describe(cfg, "tiny", 1)
    assert header.startswith("Size `tiny`: 1 configurations; 2 assets (BTCUSDT, ETHUSDT) at 60-minute bars; 1 fold(s)")
    twin = dataclasses.replace(again, entry=Entry("lstm", False, "hybrid"))  # PBO needs two configurations
    table, study = judge_study([first, twin], cfg)
    assert (
        table["in_mcs"].nunique() == 1
    )  # identical returns: one place in the confidence set (arch's MCS fails on twins)
    text = zoo_markdown(header, study, [entry], table)
    assert text.startswith("# Backbone and loss benchmark\n\n" + header)
    assert "Phase two ran on: itransformer_hybrid" in text and "| itransformer_hybrid |" in text
