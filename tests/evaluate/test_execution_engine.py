"""Cost-aware execution end to end: a policy decides at its cadence (fast == reference, positions change only at
decision bars), training's simulator and the walk-forward engines price the same decisions the same way with the
cadence, band and volatility target on (one asset and a neutral book), a neutral book sums to zero at every bar
within its cap, a learned band is trained and traded, and the engine's estimates are causal."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from diffquant.config import (
    HeadConfig,
    Hysteresis,
    ITransformerConfig,
    ModelConfig,
    SimConfig,
    WindowConfig,
)
from diffquant.data.splits import Series
from diffquant.evaluate.book import (
    BookSeries,
    book_decisions,
    book_decisions_reference,
    executed_book,
    walk_forward_book,
)
from diffquant.evaluate.hysteresis import apply_hysteresis
from diffquant.evaluate.scoring import Scorer
from diffquant.evaluate.walk_forward import policy_decisions, policy_decisions_reference, walk_forward
from diffquant.model.policy import PolicyNetwork
from diffquant.model.portfolio import PortfolioPolicy
from diffquant.sim.execution import decision_mask
from diffquant.sim.losses import Objective
from diffquant.train.book_episodes import book_episodes
from diffquant.train.episodes import EpisodeExecution, batch_loss, episode_pnl, episodes_from_arrays
from tests.evaluate.test_walk_forward import CTX, TF_MS, make_series

TINY = ITransformerConfig(d_model=8, n_heads=2, n_layers=1, d_ff=16)
PERIOD = 8  # 30-minute bars: a decision every 4 hours
H = 6  # decisions per episode


def model_cfg(**changes: object) -> ModelConfig:
    return dataclasses.replace(ModelConfig(itransformer=TINY, head=HeadConfig(dense=[8])), **changes)


def policy(every: int = PERIOD, floor: float | None = None, seed: int = 0) -> PolicyNetwork:
    torch.manual_seed(seed)
    model = PolicyNetwork(model_cfg(decision_every=every, band_floor=floor), 6, CTX)
    with torch.no_grad():
        model.head.state.weight.copy_(torch.tensor([[0.8, -0.5], [0.6, 0.3]]))
        model.head.logits.bias[1] = 1.0  # a more open gate: larger positions, more trades
    return model.eval()


def portfolio(neutral: str = "dollar", every: int = PERIOD, leverage: float = 1.0) -> PortfolioPolicy:
    torch.manual_seed(0)
    model = PortfolioPolicy(
        model_cfg(decision_every=every), 6, CTX, leverage=leverage, d_attn=8, n_heads=2, neutral=neutral, beta_window=16
    )
    with torch.no_grad():
        model.head.state.weight.copy_(torch.tensor([[0.8, -0.5], [0.6, 0.4]]))
        nn.init.normal_(model.attention.out.weight, std=0.5)
        model.head.logits.bias.copy_(torch.tensor([0.0, 2.0]))
    return model.eval()


def first_aligned(series: Series, every: int) -> int:
    """The first row whose window's last bar (row + CTX - 1) is a decision bar of the clock."""
    decide = decision_mask(series.open_time, series.timeframe_ms, every)
    return int(np.flatnonzero(decide[CTX - 1 :])[0])


def rows_of(series: Series, first: int, length: int, start: int) -> Series:
    """Rows first .. first + length - 1 of ``series`` as a series whose quarter starts at ``start``."""
    part = slice(first, first + length)
    return dataclasses.replace(
        series, **{k: getattr(series, k)[part] for k in ("features", "close", "funding", "open_time")}, start=start
    )


def test_a_policy_decides_at_its_cadence_fast_equals_reference():
    series = make_series(400, CTX + 1, seed=3)
    model = policy()
    fast, ref = policy_decisions(model, series), policy_decisions_reference(model, series)
    np.testing.assert_allclose(fast.raw, ref.raw, rtol=0, atol=2e-6)
    np.testing.assert_allclose(fast.gate, ref.gate, rtol=0, atol=2e-6)
    decide = decision_mask(series.open_time, TF_MS, PERIOD)
    decide[: CTX - 1] = False
    first = int(np.flatnonzero(decide)[0])
    assert np.isnan(fast.raw[:first]).all() and np.isfinite(fast.raw[first:]).all()
    changes = np.flatnonzero(np.diff(fast.raw[first:]) != 0) + first + 1
    assert len(changes) > 10 and decide[changes].all()  # the raw decision changes only at decision bars
    # the recursion steps from decision to decision: every decision bar's output is the one-step policy's
    every_bar = policy_decisions(policy(every=1), series)
    assert not np.allclose(every_bar.raw[decide], fast.raw[decide])


@pytest.mark.parametrize("lag", [0, 1])
def test_positions_change_only_at_decision_bars(lag):
    """Any executed decisions (here random ones every bar, as a rule baseline's) through the engine at a cadence:
    the held position changes only at the bars after a decision bar's execution."""
    series = make_series(300, CTX + 1, seed=4)
    sim = SimConfig(rebalance_every=PERIOD, execution_lag_bars=lag, band=0.02, vol_target=0.6, vol_window=24)
    executed = np.random.default_rng(0).uniform(-1, 1, len(series.close))
    record = walk_forward(series, executed, sim).record
    bars = np.arange(series.start, len(series.close))
    decided = decision_mask(series.open_time, TF_MS, PERIOD)[bars - 1 - lag]  # the bar whose decision starts here
    changed = np.r_[record["position"].iloc[0] != 0, np.diff(record["position"].to_numpy()) != 0]
    assert changed.sum() > 10 and decided[changed].all()
    assert (record["trade"].to_numpy()[~decided] == 0).all()


@pytest.mark.parametrize("lag", [0, 1])
def test_the_engine_prices_an_episode_s_decisions_as_training_does(lag):
    """engine = simulator: an episode cut from a series at a 4-hour cadence with the band and a volatility target
    on; training's path (rollout, execute_decisions, held_positions, simulate) and the walk-forward engine (decision
    scan, Execution.held, the quarter's held positions) give the same decisions and the same net PnL per bar."""
    full = make_series(400, CTX, seed=5)
    first = first_aligned(full, PERIOD)
    length = CTX + H * PERIOD
    series = rows_of(full, first, length, CTX)
    sim = SimConfig(
        rebalance_every=PERIOD, execution_lag_bars=lag, band=0.2, vol_target=0.8, vol_window=24, smooth_abs_eps=1e-14
    )
    execution = EpisodeExecution(PERIOD, sim.vol_target, sim.vol_window, 30)
    episode = episodes_from_arrays(series.features[None], series.close[None], series.funding[None], CTX, execution)
    model = policy()
    with torch.no_grad():
        decided, pnl = episode_pnl(model, episode, sim, H, full_bptt=True)
    raw = policy_decisions(model, series).raw
    rows = CTX - 1 + PERIOD * np.arange(H)
    np.testing.assert_allclose(raw[rows], decided[0].double().numpy(), rtol=0, atol=1e-5)
    executed = np.zeros(len(series.close))  # flat before the episode's first decision
    executed[rows] = decided[0].double().numpy()
    record = walk_forward(series, executed, sim).record
    assert len(record) == H * PERIOD
    np.testing.assert_allclose(record["net"].to_numpy(), pnl[0].double().numpy(), rtol=1e-5, atol=1e-8)
    assert np.abs(record["net"].to_numpy()).max() > 1e-4
    scale = np.abs(record["position"].to_numpy()).max() / np.abs(decided.numpy()).max()
    assert scale > 1.01  # the volatility target did act, and so did the band: some decisions were not traded
    assert 0 < (record["trade"].to_numpy() != 0).sum() < H


def test_a_neutral_book_is_priced_by_the_engine_as_training_prices_it():
    """The same for a dollar-neutral book of three assets: training's book episodes and the book engine."""
    full = [make_series(400, CTX, seed=s) for s in (6, 7, 8)]
    first = first_aligned(full[0], PERIOD)
    length = CTX + H * PERIOD
    sim = SimConfig(rebalance_every=PERIOD, band=0.05, vol_target=0.8, vol_window=24, smooth_abs_eps=1e-14)
    window = WindowConfig(context=CTX, horizon=H, stride=1000)
    execution = EpisodeExecution(PERIOD, sim.vol_target, sim.vol_window, 30)
    train = [dataclasses.replace(s, start=0) for s in full]
    episodes = book_episodes(train, window, execution)
    np.testing.assert_array_equal(episodes.features[0, :, 0].numpy(), full[0].features[first : first + length])
    model = portfolio("dollar")
    with torch.no_grad():
        decided, pnl = episode_pnl(model, episodes.index(torch.tensor([0])), sim, H, full_bptt=True)
    book = BookSeries.of([rows_of(s, first, length, CTX) for s in full], ["A", "B", "C"])
    executed = np.zeros(book.rows.shape)
    executed[CTX - 1 + PERIOD * np.arange(H)] = decided[0].double().numpy()
    result = walk_forward_book(book, executed, sim, leverage=model.leverage)
    np.testing.assert_allclose(result.record["net"].to_numpy(), pnl[0].double().numpy(), rtol=1e-5, atol=1e-8)
    weights = result.record[["w_A", "w_B", "w_C"]].to_numpy()
    assert np.abs(weights).sum(1).max() > 0.1 and np.abs(weights.sum(1)).max() < 1e-7  # float32 decisions


@pytest.mark.parametrize("neutral", ["dollar", "beta"])
def test_a_neutral_book_holds_neutral_weights_within_its_cap_at_every_bar(neutral):
    """Decisions (fast == reference), hysteresis per asset, then the book through the engine with the volatility
    target and the band: a dollar-neutral book's weights sum to 0 within 1e-9 at every bar and its gross stays
    within the cap; a beta-neutral book's decisions have zero beta at every decision slot."""
    a, b, c = (make_series(400, CTX + 1, seed=s) for s in (1, 2, 3))
    book = BookSeries.of([a, b, c], ["A", "B", "C"])
    model = portfolio(neutral, leverage=0.8)
    decisions = book_decisions(model, book)
    reference = book_decisions_reference(model, book)
    np.testing.assert_allclose(decisions.raw, reference.raw, rtol=0, atol=1e-5, equal_nan=True)
    executed = executed_book(decisions, Hysteresis(), model.leverage)
    sim = SimConfig(rebalance_every=PERIOD, band=0.05, vol_target=1.5, vol_window=24)
    weights = walk_forward_book(book, executed, sim, leverage=model.leverage).record[["w_A", "w_B", "w_C"]].to_numpy()
    assert np.abs(weights).sum(1).max() > 0.3  # not a flat book
    assert (np.abs(weights).sum(1) <= model.leverage + 1e-12).all()
    decide = decision_mask(book.open_time, TF_MS, PERIOD) & np.isfinite(decisions.raw).all(1)
    if neutral == "dollar":
        assert np.abs(weights.sum(1)).max() < 1e-9
        assert np.abs(np.nansum(decisions.raw[decide], 1)).max() < 1e-12
    else:
        beta = book.betas(model.beta_window)[decide]
        assert np.abs((decisions.raw[decide] * beta).sum(1)).max() < 1e-12
        assert np.abs((executed[decide] * beta).sum(1)).max() < 1e-12  # again after hysteresis
        assert np.abs(weights.sum(1)).max() > 1e-3  # beta-neutral is not dollar-neutral


def test_a_learned_band_is_trained_and_traded():
    """The width is a parameter: the loss's gradient reaches it, it never falls below its floor, and the engine
    trades the width the policy learned (the decisions carry it)."""
    series = make_series(400, CTX, seed=9)
    first = first_aligned(series, PERIOD)
    length = CTX + H * PERIOD
    cut = rows_of(series, first, length, CTX)
    episode = episodes_from_arrays(
        cut.features[None], cut.close[None], cut.funding[None], CTX, EpisodeExecution(PERIOD)
    )
    model = policy(floor=0.03).train()
    sim = SimConfig(rebalance_every=PERIOD, band=0.03, band_learned=True)
    loss, _, _ = batch_loss(
        model,
        episode,
        Objective(ModelConfig and __import__("diffquant.config", fromlist=["LossConfig"]).LossConfig(), 1e-6),
        sim,
        H,
        True,
    )
    loss.backward()
    assert model.band.theta.grad is not None and model.band.theta.grad.abs() > 0
    with torch.no_grad():
        model.band.theta.fill_(-30.0)
    assert model.band.value() >= 0.03 and model.band.value() == pytest.approx(0.03, abs=1e-12)  # the floor
    with torch.no_grad():
        model.band.theta.fill_(0.0)
    model.eval()
    decisions = policy_decisions(model, series)
    assert decisions.band == pytest.approx(0.03 + np.log(2.0))
    scorer = Scorer(sim, 30, 365)
    learned = scorer.executed(series, decisions, Hysteresis())[0].record
    fixed = walk_forward(
        series, apply_hysteresis(decisions.raw, Hysteresis()), dataclasses.replace(sim, band=decisions.band)
    ).record
    np.testing.assert_array_equal(learned["net"].to_numpy(), fixed["net"].to_numpy())


def test_the_engine_s_volatility_and_betas_are_causal():
    """Changing every bar after bar t changes no position decided at t or before: the volatility scale (one asset)
    and the betas (a beta-neutral book) read only the bars up to each decision."""
    series = make_series(400, CTX + 1, seed=10)
    sim = SimConfig(rebalance_every=4, vol_target=0.6, vol_window=24)
    executed = np.random.default_rng(1).uniform(-1, 1, len(series.close))
    decide = decision_mask(series.open_time, TF_MS, sim.rebalance_every)
    cut = int(np.flatnonzero(decide[:251])[-1])  # a decision bar: its decision is the first a peek would move
    close = series.close.copy()
    close[cut + 1 :] *= np.exp(np.random.default_rng(2).normal(0, 0.05, len(close) - cut - 1))
    changed = dataclasses.replace(series, close=close)
    before, after = (walk_forward(s, executed, sim).record["position"].to_numpy() for s in (series, changed))
    held_until = cut + 1 + sim.execution_lag_bars - series.start  # rows holding decisions of bars <= cut
    assert np.array_equal(before[: held_until + 1], after[: held_until + 1])
    assert not np.array_equal(before, after)
    a, b, c = (make_series(400, CTX + 1, seed=s) for s in (1, 2, 3))
    moved = dataclasses.replace(c, close=np.r_[c.close[: cut + 1], c.close[cut + 1 :] * 1.5])
    model = portfolio("beta")
    one, two = (book_decisions(model, BookSeries.of(x, ["A", "B", "C"])) for x in ([a, b, c], [a, b, moved]))
    assert np.array_equal(one.raw[: cut + 1], two.raw[: cut + 1], equal_nan=True)
    assert np.array_equal(one.beta[: cut + 1], two.beta[: cut + 1], equal_nan=True)
    assert not np.array_equal(one.raw, two.raw, equal_nan=True)
