"""The momentum rule and the cost sweep: known answers on synthetic markets, through the one engine."""

from __future__ import annotations

import numpy as np
import pytest

from diffquant.config import SimConfig
from diffquant.evaluate.baselines import choose_momentum, momentum_decisions
from diffquant.evaluate.scoring import Scorer
from diffquant.evaluate.walk_forward import constant_positions
from tests.evaluate.test_walk_forward import make_series

SCORER = Scorer(SimConfig(), timeframe_minutes=30, days_per_year=365)


def test_momentum_holds_the_sign_of_the_past_return_and_is_causal() -> None:
    series = make_series(300, 20)
    n = 12
    got = momentum_decisions(series, n)
    assert np.isnan(got[:n]).all()
    c = series.close
    for k in (n, 50, 299):
        assert got[k] == np.sign(c[k] - c[k - n])
    later = make_series(300, 20, seed=1)  # other bars after k = 150 must not change any decision up to 150
    mixed = type(series)(
        series.features,
        np.r_[c[:151], later.close[151:]],
        series.funding,
        series.open_time,
        series.start,
        series.timeframe_ms,
        series.feature_names,
    )
    np.testing.assert_array_equal(momentum_decisions(mixed, n)[:151], got[:151])


def test_choose_momentum_keeps_the_lookback_with_the_best_val_sharpe() -> None:
    series = make_series(400, 20)
    choice, table = choose_momentum(series, [4, 8, 16], SCORER)
    assert list(table["lookback"]) == [4, 8, 16]
    for n in (4, 8, 16):
        sharpe = SCORER.positions(series, momentum_decisions(series, n))[1]["sharpe"]
        assert table.set_index("lookback").loc[n, "sharpe"] == pytest.approx(sharpe)
    assert choice.lookback == int(table.loc[table["sharpe"].idxmax(), "lookback"])
    assert choice.val_sharpe == table["sharpe"].max() and choice.candidate_sharpes == list(table["sharpe"])


def test_cost_sweep_scales_every_cost_and_break_even_zeroes_the_mean_return() -> None:
    series = make_series(600, 20, seed=3)
    executed = momentum_decisions(series, 4)
    executed[:20] = 0.0
    sweep = SCORER.cost_sweep(series, executed, [0.0, 1.0, 2.0, 3.0])
    sharpes = [sweep["levels"][k]["sharpe"] for k in ("0x", "1x", "2x", "3x")]
    assert sharpes == sorted(sharpes, reverse=True) and sharpes[0] > sharpes[-1]
    assert sweep["levels"]["1x"]["sharpe"] == pytest.approx(SCORER.positions(series, executed)[1]["sharpe"])
    zero = SCORER.at_cost(0.0).positions(series, executed)[0].record
    assert (zero["commission"] == 0).all()

    multiple = sweep["break_even_multiple"]
    at_break_even = SCORER.at_cost(multiple).positions(series, executed)[0].record
    assert at_break_even["net"].sum() == pytest.approx(0.0, abs=1e-12)
    assert sweep["break_even_bps"] == pytest.approx(multiple * (0.0004 + 0.0003) * 1e4)


def test_break_even_of_a_book_that_never_trades_is_none() -> None:
    series = make_series(200, 20)
    sweep = SCORER.cost_sweep(series, constant_positions(series, 0.0), [0.0, 1.0])
    assert sweep["break_even_multiple"] is None and sweep["break_even_bps"] is None
    assert sweep["levels"]["0x"]["sharpe"] == 0.0
