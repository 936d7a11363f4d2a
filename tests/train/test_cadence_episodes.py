"""Training episodes at a decision cadence: an episode holds horizon decisions on the clock's decision bars (so it
spans context + horizon x cadence bars), episodes start every stride decisions, one asset's are cut from its train
series, and the loss trains through the execution layer (cadence, volatility target, band)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from diffquant.config import HeadConfig, ITransformerConfig, LossConfig, ModelConfig, SimConfig, WindowConfig
from diffquant.data.splits import Samples
from diffquant.errors import ConfigError
from diffquant.model.policy import PolicyNetwork
from diffquant.sim.execution import decision_mask
from diffquant.sim.losses import Objective
from diffquant.train.book_episodes import clock_episodes
from diffquant.train.episodes import EpisodeExecution, batch_loss
from diffquant.train.policy_training import TrainingData, training_episodes
from tests.evaluate.test_walk_forward import TF_MS, make_series
from tests.study.test_fold_run import tiny

CTX, H, P = 32, 4, 8
WINDOW = WindowConfig(context=CTX, horizon=H, stride=2)


def test_episodes_at_a_cadence_hold_horizon_decisions_on_the_clock():
    series = [dataclasses.replace(make_series(600, 0, seed=s), start=0) for s in (1, 2)]
    execution = EpisodeExecution(P, vol_target=0.5, vol_window=24, timeframe_minutes=30)
    batch = clock_episodes(series, WINDOW, execution)
    assert batch.features.shape[1:] == (CTX + H * P, 6) and batch.returns.shape[1:] == (H * P,)
    assert batch.risk.shape == (len(batch), H) and torch.isfinite(batch.risk).all() and batch.present is None
    for s, first in zip(series, (0, len(batch) // 2), strict=True):  # the first episode of each asset
        row = next(i for i in range(len(s.close)) if np.array_equal(s.features[i], batch.features[first, 0].numpy()))
        decisions = row + CTX - 1 + P * np.arange(H)
        assert decision_mask(s.open_time, TF_MS, P)[decisions].all()  # decisions on the clock's decision bars
        second = next(
            i for i in range(len(s.close)) if np.array_equal(s.features[i], batch.features[first + 1, 0].numpy())
        )
        assert second - row == WINDOW.stride * P  # episodes start every stride decisions
    model = PolicyNetwork(
        ModelConfig(
            itransformer=ITransformerConfig(d_model=8, n_heads=2, n_layers=1, d_ff=16),
            head=HeadConfig(dense=[8]),
            decision_every=P,
        ),
        6,
        CTX,
    )
    sim = SimConfig(rebalance_every=P, band=0.02, vol_target=0.5, vol_window=24)
    loss, _, pnl = batch_loss(model, batch, Objective(LossConfig(), 1e-6), sim, H, True)
    loss.backward()
    assert pnl.shape == (len(batch), H * P) and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.head.logits.weight.grad.abs().sum() > 0


def test_one_asset_at_a_cadence_needs_its_train_series():
    cfg = tiny(**{"sim.rebalance_every": 8})
    series = make_series(400, 0, seed=3)
    samples = Samples(
        np.zeros((1, 32, 6), np.float32),
        np.ones((1, 32)),
        np.zeros((1, 32)),
        np.zeros(1, np.int64),
        list(series.feature_names),
    )
    with pytest.raises(ConfigError, match="train series"):
        training_episodes(cfg, TrainingData(samples, (series,), source="a split without train_series.npz"))
    batch = training_episodes(
        cfg, TrainingData(samples, (series,), train_series=(dataclasses.replace(series, start=0),))
    )
    assert batch.features.shape[1] == cfg.window.context + cfg.window.horizon * 8
