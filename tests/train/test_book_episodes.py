"""A portfolio's training episodes: one asset gives its single-asset episodes, a late asset is masked (never padded),
and a portfolio of one asset trains to the same loss as the single-asset policy."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from diffquant.config import HeadConfig, ITransformerConfig, LossConfig, ModelConfig, SimConfig, WindowConfig
from diffquant.data.splits import Series
from diffquant.model.policy import PolicyNetwork
from diffquant.model.portfolio import PortfolioPolicy
from diffquant.sim.losses import Objective
from diffquant.train.book_episodes import book_episodes
from diffquant.train.episodes import batch_loss, episodes_from_arrays, mirror
from tests.evaluate.test_walk_forward import make_series

WINDOW = WindowConfig(context=16, horizon=8, stride=8)
CFG = ModelConfig(
    itransformer=ITransformerConfig(d_model=8, n_heads=2, n_layers=1, d_ff=16), head=HeadConfig(dense=[8])
)


def as_train(series: Series) -> Series:
    return dataclasses.replace(series, start=0)


def samples_of(s: Series) -> tuple[np.ndarray, ...]:
    """The split stage's samples of a gap-free series: windows every stride rows from its first bar."""
    length = WINDOW.context + WINDOW.horizon
    rows = np.arange(0, len(s.close) - length + 1, WINDOW.stride)[:, None] + np.arange(length)
    return s.features[rows], s.close[rows], s.funding[rows]


def test_one_asset_gives_its_single_asset_episodes():
    s = as_train(make_series(300, 0, seed=1))
    book, single = book_episodes([s], WINDOW), episodes_from_arrays(*samples_of(s), WINDOW.context)
    assert book.present is not None and book.present.all()
    for ours, theirs in zip(book.astuple()[:3], single.astuple()[:3], strict=True):
        torch.testing.assert_close(ours.squeeze(2), theirs, rtol=0, atol=0)
    torch.testing.assert_close(book.context_vol, single.context_vol, rtol=0, atol=0)  # one asset: its own regime


def test_an_asset_without_the_episode_span_is_masked_not_padded():
    a = as_train(make_series(300, 0, seed=1))
    b = as_train(make_series(300, 0, seed=2, gap_after=(100,)))
    b = dataclasses.replace(b, **{k: getattr(b, k)[40:] for k in ("features", "close", "funding", "open_time")})
    batch = book_episodes([a, b], WINDOW)
    present = batch.present.numpy()
    assert present[:, 0].all() and not present[:, 1].all() and present[:, 1].any()
    starts = a.open_time[0] + np.arange(len(present)) * WINDOW.stride * a.timeframe_ms
    t = b.open_time
    for k in np.flatnonzero(present[:, 1]):  # b present: it has all 24 bars of the episode, consecutive
        i = int(np.searchsorted(t, starts[k]))
        assert t[i] == starts[k] and t[i + 23] - t[i] == 23 * a.timeframe_ms
    absent = ~present[:, 1]
    assert torch.isnan(batch.features[absent][:, :, 1]).all()
    assert (batch.returns[absent][:, :, 1] == 0).all() and (batch.funding[absent][:, :, 1] == 0).all()
    assert torch.isfinite(batch.features[:, :, 0]).all()


def test_a_portfolio_of_one_asset_has_the_single_asset_loss_and_mirror():
    s = as_train(make_series(300, 0, seed=3))
    sim, objective = SimConfig(), Objective(LossConfig(), SimConfig().smooth_abs_eps)
    torch.manual_seed(0)
    portfolio = PortfolioPolicy(CFG, 6, WINDOW.context, d_attn=8, n_heads=2)
    single = PolicyNetwork(CFG, 6, WINDOW.context)
    single.backbone.load_state_dict(portfolio.backbone.state_dict())
    single.head.load_state_dict(portfolio.head.state_dict())
    perm, sign = torch.tensor([0, 2, 1, 3, 4, 5]), torch.tensor([-1.0, -1.0, -1.0, -1.0, 1.0, 1.0])
    book, flat = book_episodes([s], WINDOW), episodes_from_arrays(*samples_of(s), WINDOW.context)
    portfolio.eval(), single.eval()
    ours = batch_loss(portfolio, book, objective, sim, WINDOW.horizon, True, mirror(book, perm, sign))
    theirs = batch_loss(single, flat, objective, sim, WINDOW.horizon, True, mirror(flat, perm, sign))
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=0)
    torch.testing.assert_close(ours[2], theirs[2], rtol=0, atol=0)
