"""Walk-forward: fast == reference decisions, causality, the lag, gaps, funding, hysteresis, determinism."""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pandas as pd
import pytest
import torch

from diffquant.config import SERIES_BACKBONES, BackboneName, Hysteresis, ModelConfig, SimConfig
from diffquant.data.splits import Series
from diffquant.evaluate.hysteresis import apply_hysteresis
from diffquant.evaluate.walk_forward import (
    RECORD_COLUMNS,
    constant_positions,
    policy_decisions,
    policy_decisions_reference,
    walk_forward,
)
from diffquant.model.policy import PolicyNetwork

TF_MS = 30 * 60_000
T0_MS = 1_735_689_600_000  # 2025-01-01 00:00 UTC
CTX = 64
COST = SimConfig().cost_rate


def make_series(n: int, start: int, seed: int = 0, gap_after: tuple[int, ...] = ()) -> Series:
    """A random-walk market with OHLCV-like causal features (log-returns, volume ratio, rolling vol) and funding
    every 16 bars; ``gap_after`` inserts a missing stretch after those rows."""
    rng = np.random.default_rng(seed)
    closes = 30_000.0 * np.exp(np.cumsum(rng.normal(0.0, 0.004, n + 1)))
    prev, close = closes[:-1], closes[1:]
    open_ = prev * np.exp(rng.normal(0.0, 0.0005, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.002, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.002, n)))
    volume = rng.lognormal(5.0, 0.5, n)
    log_ret = np.log(close / prev)
    features = np.column_stack(
        [
            np.log(open_ / prev),
            np.log(high / prev),
            np.log(low / prev),
            log_ret,
            np.log(volume / pd.Series(volume).rolling(12, min_periods=1).mean().to_numpy() + 1.0),
            np.log(np.maximum(pd.Series(log_ret).rolling(12, min_periods=1).std(ddof=0).to_numpy(), 1e-6)),
        ]
    ).astype(np.float32)
    funding = np.where(np.arange(n) % 16 == 0, rng.normal(1e-4, 5e-5, n), 0.0)
    steps = np.full(n, TF_MS, dtype=np.int64)
    steps[0] = 0
    for g in gap_after:
        steps[g + 1] += 3 * TF_MS
    open_time = T0_MS + np.cumsum(steps)
    names = ["open", "high", "low", "close", "volume", "rolling_vol"]
    return Series(features, close, funding, open_time, start, TF_MS, names)


def make_model(backbone: str = "itransformer", seed: int = 0) -> PolicyNetwork:
    """A random policy with a non-zero state feedback, so that the recursion matters."""
    torch.manual_seed(seed)
    model = PolicyNetwork(ModelConfig(backbone=backbone), 6, CTX)
    with torch.no_grad():
        model.head.state.weight.copy_(torch.tensor([[0.8, -0.5], [0.6, 0.3]]))
        model.head.logits.bias[1] = 1.0  # a more open gate: larger positions, more trades
    return model


def with_bars_replaced(series: Series, after: int, seed: int) -> Series:
    """The same series with features, close and funding of every bar after ``after`` redrawn."""
    other = make_series(len(series.close), series.start, seed=seed)
    keep = np.arange(len(series.close)) <= after
    return dataclasses.replace(
        series,
        features=np.where(keep[:, None], series.features, other.features),
        close=np.where(keep, series.close, other.close),
        funding=np.where(keep, series.funding, other.funding),
    )


# -- decisions ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", typing.get_args(BackboneName))
def test_fast_decisions_match_the_per_bar_reference(backbone: str) -> None:
    series = make_series(600, CTX + 1)
    model = make_model(backbone)
    model.train()
    fast = policy_decisions(model, series, batch_size=128)  # several batches
    ref = policy_decisions_reference(model, series)
    assert model.training  # the caller's mode is restored
    assert np.isnan(fast.raw[: CTX - 1]).all() and np.isnan(ref.raw[: CTX - 1]).all()
    assert np.isfinite(fast.raw[CTX - 1 :]).all()
    assert np.abs(fast.raw[CTX - 1 :]).max() > 0.05  # a non-trivial policy
    np.testing.assert_allclose(fast.raw[CTX - 1 :], ref.raw[CTX - 1 :], rtol=0, atol=1e-5)
    np.testing.assert_allclose(fast.gate[CTX - 1 :], ref.gate[CTX - 1 :], rtol=0, atol=1e-5)


@pytest.mark.parametrize("backbone", SERIES_BACKBONES)
def test_series_path_decisions_match_the_per_bar_reference(backbone: str) -> None:
    """``model.series``: one causal pass over the series equals recomputing every bar from the series' start."""
    series = make_series(CTX + 60, CTX + 1)
    torch.manual_seed(0)
    model = PolicyNetwork(dataclasses.replace(ModelConfig(backbone=backbone), series=True), 6, CTX)
    with torch.no_grad():
        model.head.state.weight.copy_(torch.tensor([[0.8, -0.5], [0.6, 0.3]]))
    fast = policy_decisions(model, series)
    ref = policy_decisions_reference(model, series)
    assert np.isfinite(fast.raw[CTX - 1 :]).all() and np.isnan(fast.raw[: CTX - 1]).all()
    np.testing.assert_allclose(fast.raw[CTX - 1 :], ref.raw[CTX - 1 :], rtol=0, atol=1e-5)
    np.testing.assert_allclose(fast.gate[CTX - 1 :], ref.gate[CTX - 1 :], rtol=0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decisions_run_on_the_model_device() -> None:
    series, model = make_series(300, CTX + 1), make_model()
    cpu = policy_decisions_reference(model, series)
    cuda = policy_decisions(model.cuda(), series)
    np.testing.assert_allclose(cuda.raw, cpu.raw, rtol=0, atol=1e-4, equal_nan=True)


def test_decisions_are_deterministic() -> None:
    series, model = make_series(300, CTX + 1), make_model()
    first, again = policy_decisions(model, series), policy_decisions(model, series)
    np.testing.assert_array_equal(first.raw, again.raw)
    np.testing.assert_array_equal(first.gate, again.gate)
    other_batches = policy_decisions(model, series, batch_size=64)
    np.testing.assert_allclose(first.raw, other_batches.raw, rtol=0, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("lag", [0, 1])
def test_nothing_at_or_before_t_depends_on_bars_after_t(lag: int) -> None:
    """Redraw every bar after t (features, close, funding). Unchanged: the raw and executed decisions of bars <= t,
    the positions held during bars <= t + 1 + L (decided at bars <= t) and every record row of a bar <= t. The
    decisions after t and the positions held after bar t + 1 + L do change, so the check is not vacuous."""
    sim = SimConfig(execution_lag_bars=lag)
    start = CTX + lag
    series, model = make_series(400, start), make_model()
    t = 250
    changed = with_bars_replaced(series, t, seed=7)

    def run(s: Series) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        d = policy_decisions(model, s)
        executed = apply_hysteresis(d.raw, Hysteresis(0.05, 0.05, 0.02, 0.01))
        return d.raw, executed, walk_forward(s, executed, sim, raw=d.raw, gate=d.gate).record

    raw_a, exec_a, rec_a = run(series)
    raw_b, exec_b, rec_b = run(changed)
    np.testing.assert_array_equal(raw_a[: t + 1], raw_b[: t + 1])
    np.testing.assert_array_equal(exec_a[: t + 1], exec_b[: t + 1])
    assert not np.allclose(raw_a[t + 1 :], raw_b[t + 1 :])  # the change is seen where it may be
    row = np.arange(start, len(series.close))  # the bar of each record row
    held_known = row <= t + 1 + lag
    np.testing.assert_array_equal(rec_a["position"][held_known], rec_b["position"][held_known])
    assert not np.allclose(rec_a["position"][~held_known], rec_b["position"][~held_known])
    pd.testing.assert_frame_equal(rec_a[row <= t], rec_b[row <= t])


# -- the engine -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lag", [0, 1, 2])
def test_each_row_holds_the_decision_of_bar_j_minus_1_minus_lag(lag: int) -> None:
    series = make_series(40, 5)
    executed = np.random.default_rng(1).uniform(-1, 1, 40)
    rec = walk_forward(series, executed, SimConfig(execution_lag_bars=lag, funding=False)).record
    c = series.close
    assert len(rec) == 40 - 5
    for i, j in enumerate(range(5, 40)):
        x = executed[j - 1 - lag]
        assert rec["position"][i] == x
        assert rec["gross"][i] == pytest.approx(x * (c[j] / c[j - 1] - 1.0), rel=1e-12)
        prev = 0.0 if i == 0 else executed[j - 2 - lag]  # flat before the quarter
        assert rec["commission"][i] == pytest.approx(abs(x - prev) * COST, rel=1e-12)
    assert rec["close"].tolist() == c[5:].tolist()
    assert rec["time"][0] == pd.Timestamp(T0_MS + 5 * TF_MS, unit="ms", tz="UTC")


def test_record_columns_and_equity() -> None:
    series = make_series(30, 4)
    d = np.linspace(-1, 1, 30)
    result = walk_forward(series, d, SimConfig(), raw=d * 2, gate=np.full(30, 0.5))
    rec = result.record
    assert tuple(rec.columns) == RECORD_COLUMNS
    assert rec["equity"].dtype == np.float64
    np.testing.assert_allclose(rec["equity"], np.cumprod(1.0 + rec["net"]), rtol=1e-15)
    np.testing.assert_allclose(rec["net"], rec["gross"] - rec["commission"] - rec["funding"], atol=1e-18)
    np.testing.assert_array_equal(rec["raw_position"], 2 * rec["position"])  # the decision that set it
    assert (rec["gate"] == 0.5).all()
    reb = result.rebalances
    assert len(reb) == int((rec["trade"] != 0).sum()) == 26
    np.testing.assert_allclose(reb["to"] - reb["from"], rec["trade"][rec["trade"] != 0], atol=1e-15)
    assert reb["from"].iloc[0] == 0.0


def test_no_return_is_earned_across_a_gap() -> None:
    series = make_series(30, 3, gap_after=(14,))
    assert series.gap_before[15] and series.gap_before.sum() == 1
    rec = walk_forward(series, constant_positions(series, 1.0), SimConfig(funding=False)).record
    gross = rec["gross"].to_numpy()
    assert gross[15 - 3] == 0.0
    assert np.count_nonzero(gross) == len(gross) - 1
    c = series.close
    expected = (1.0 + c[3] / c[2] - 1.0 - COST) * np.prod(np.r_[c[4:15] / c[3:14], c[16:] / c[15:-1]])
    assert rec["equity"].iloc[-1] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("side", [1.0, -1.0])
def test_a_long_pays_positive_funding_and_a_short_receives_it(side: float) -> None:
    series = make_series(40, 3)
    rate = series.funding[3:]
    assert (rate > 0).sum() >= 2
    on = walk_forward(series, constant_positions(series, side), SimConfig()).record
    off = walk_forward(series, constant_positions(series, side), SimConfig(funding=False)).record
    np.testing.assert_array_equal(on["funding"], side * rate)
    assert (off["funding"] == 0).all()
    np.testing.assert_allclose(on["net"], off["net"] - side * rate, atol=1e-18)
    assert (on["net"].sum() < off["net"].sum()) == (side > 0)


def test_flat_and_buy_and_hold_baselines() -> None:
    series = make_series(50, 5)
    flat = walk_forward(series, constant_positions(series, 0.0), SimConfig()).record
    assert (flat["net"] == 0).all() and (flat["equity"] == 1).all()
    hold = walk_forward(series, constant_positions(series, 1.0), SimConfig(funding=False))
    assert len(hold.rebalances) == 1 and hold.rebalances["commission"].iloc[0] == pytest.approx(COST)
    c = series.close
    expected = (c[5] / c[4] - COST) * c[-1] / c[5]
    assert hold.record["equity"].iloc[-1] == pytest.approx(expected, rel=1e-12)


def test_policy_path_with_hysteresis_runs_through_the_engine() -> None:
    series, model = make_series(200, CTX + 1), make_model()
    d = policy_decisions(model, series)
    executed = apply_hysteresis(d.raw, Hysteresis(0.1, 0.1, 0.05, 0.03))
    rec = walk_forward(series, executed, SimConfig(), raw=d.raw, gate=d.gate).record
    assert rec["raw_position"].notna().all() and rec["gate"].between(0, 1).all()
    assert np.isfinite(rec.drop(columns="time").to_numpy()).all()


def test_refuses_a_held_bar_without_a_decision_and_a_short_warm_up() -> None:
    series = make_series(30, 5)
    executed = np.zeros(30)
    executed[3] = np.nan  # held by bar 5 with lag 1
    with pytest.raises(ValueError, match="no executed decision at bar 3"):
        walk_forward(series, executed, SimConfig(execution_lag_bars=1))
    walk_forward(series, executed, SimConfig(execution_lag_bars=0))  # bar 3 is never held with lag 0
    with pytest.raises(ValueError, match=r"series\.start"):
        walk_forward(make_series(30, 1), np.zeros(30), SimConfig(execution_lag_bars=1))
    with pytest.raises(ValueError, match="shape"):
        walk_forward(series, np.zeros(29), SimConfig())
    with pytest.raises(ValueError, match="gate has shape"):
        walk_forward(series, np.zeros(30), SimConfig(), gate=np.zeros(29))


# -- hysteresis -----------------------------------------------------------------------------------------------------


def test_hysteresis_by_hand() -> None:
    raw = np.array([np.nan, 0.05, 0.12, 0.08, 0.13, 0.14, 0.03, -0.2, -0.07, -0.11, 0.0, 0.5])
    # nan: flat | 0.05 dead band, keep 0 | 0.12 enter long | 0.08 dead band, keep | 0.13 move < 0.03, keep 0.12 |
    # 0.14 move 0.02, keep | 0.03 < exit: close | -0.2 enter short | -0.07 keep | -0.11 move 0.09 | 0 close | 0.5
    expected = [0.0, 0.0, 0.12, 0.12, 0.12, 0.12, 0.0, -0.2, -0.2, -0.11, 0.0, 0.5]
    got = apply_hysteresis(raw, Hysteresis(0.1, 0.1, 0.05, 0.03))
    np.testing.assert_array_equal(got, expected)


def test_hysteresis_min_delta_applies_to_closing_and_nan_forces_flat() -> None:
    got = apply_hysteresis(np.array([0.2, 0.21, 0.01]), Hysteresis(0.1, 0.1, 0.05, 0.03))
    np.testing.assert_array_equal(got, [0.2, 0.2, 0.0])
    # 0.5 -> 0.2 is a move of 0.3 >= 0.25; closing 0.2 is a move of 0.2 < 0.25: the position stays
    got = apply_hysteresis(np.array([0.5, 0.2, 0.01]), Hysteresis(0.1, 0.1, 0.05, 0.25))
    np.testing.assert_array_equal(got, [0.5, 0.2, 0.2])
    got = apply_hysteresis(np.array([0.5, np.nan, 0.5]), Hysteresis(0.1, 0.1, 0.05, 0.9))
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.0])  # 0.5 < min_delta: never entered
    got = apply_hysteresis(np.array([0.5, np.nan, 0.5]), Hysteresis(0.1, 0.1, 0.05, 0.03))
    np.testing.assert_array_equal(got, [0.5, 0.0, 0.5])
