"""The MSE proxy: its targets, its loss (least squares, nothing else), and that it learns a planted signal."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffquant.config import ModelConfig, TrainConfig, from_dict
from diffquant.model.forecaster import Forecaster
from diffquant.train import checkpoint
from diffquant.train.proxy import (
    ForecastTask,
    LowestMse,
    calibrate,
    forecast_quality,
    forecast_set,
    horizon_log_returns,
)
from diffquant.train.resume import ResumeSpec
from diffquant.train.trainer import fit_task
from tests.evaluate.test_walk_forward import make_series
from tests.repo_copy import stage, tiny_params

CTX, H, LAG = 16, 4, 1
MODEL = from_dict(
    {
        "model": {
            "itransformer": {"d_model": 8, "n_heads": 2, "n_layers": 1, "d_ff": 16},
            "head": {"dense": [8], "dropout": 0.0},
        }
    }
).model


def test_targets_are_the_next_horizon_log_returns_after_the_lag_and_skip_gaps() -> None:
    series = make_series(200, CTX + LAG, gap_after=(120,))
    k, target = horizon_log_returns(series, CTX, H, LAG)
    gap = series.gap_before
    expected_k, expected = [], []
    for bar in range(CTX - 1, len(series.close) - LAG - H):
        if not gap[bar - CTX + 2 : bar + LAG + H + 1].any():  # window and target span without a gap
            expected_k.append(bar)
            expected.append(np.log(series.close[bar + LAG + H] / series.close[bar + LAG]))
    np.testing.assert_array_equal(k, expected_k)
    np.testing.assert_allclose(target, expected, rtol=1e-10)  # log-difference vs log-ratio
    # the gap is before bar 121: decisions 116 .. 135 have it inside their window or their target span
    assert {115, 136} <= set(k) and not set(range(116, 136)) & set(k)


def test_the_loss_is_the_mean_squared_error_of_the_standardised_target() -> None:
    series = make_series(200, CTX + LAG)
    data = forecast_set(series, CTX, H, LAG, scale=0.01)
    torch.manual_seed(0)
    model = Forecaster(MODEL, 6, CTX).eval()  # no dropout: both sides see the same network
    idx = torch.arange(10, 42)
    loss = ForecastTask(data, batch_size=32).loss(model, idx)
    windows = torch.as_tensor(series.features).unfold(0, CTX, 1)[data.rows[idx]]  # (32, F, ctx)
    by_hand = torch.mean((model.encode_channel_major(windows) - data.target[idx]) ** 2)
    torch.testing.assert_close(loss, by_hand)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def _planted(n: int, seed: int):
    """A market whose next-horizon return is announced in the first feature channel."""
    series = make_series(n, CTX + LAG, seed=seed)
    k, target = horizon_log_returns(series, CTX, H, LAG)
    features = series.features.copy()
    features[:, 0] = 0.0
    features[k, 0] = (target / target.std()).astype(np.float32)
    return dataclasses.replace(series, features=features)


@pytest.mark.slow  # trains the proxy for several epochs
def test_the_proxy_learns_a_planted_signal_and_keeps_the_epoch_with_the_lowest_val_mse(tmp_path: Path) -> None:
    train, val = _planted(1500, 1), _planted(600, 2)
    scale = float(np.std(horizon_log_returns(train, CTX, H, LAG)[1]))
    train_set, val_set = (forecast_set(s, CTX, H, LAG, scale) for s in (train, val))
    cfg = TrainConfig(epochs=8, lr=3e-3, val_freq=1, warmup_epochs=0)
    torch.manual_seed(0)
    model = Forecaster(MODEL, 6, CTX)
    result = fit_task(
        model,
        ForecastTask(train_set, 128),
        lambda m: forecast_quality(m, val_set),
        LowestMse(),
        cfg,
        0,
        tmp_path,
        ResumeSpec({}, 0),
        progress=False,
    )
    val_mse = [r["val_mse"] for r in result.history]
    assert result.best_epoch == int(np.argmin(val_mse)) + 1 and result.best_score == -min(val_mse)
    best = checkpoint.load(tmp_path / "best.pt")
    model.load_state_dict(best["model_state"])
    quality = forecast_quality(model, val_set)
    assert quality["ic"] > 0.5 and quality["hit_rate"] > 0.65, quality
    scale = calibrate(model, train_set)
    assert float(model.scale) == pytest.approx(scale) and scale > 0


@pytest.mark.slow
def test_proxy_weights_ignore_the_loss_and_the_costs(prepared: Path, tmp_path: Path) -> None:
    """No Sharpe, regulariser or cost enters the proxy's training: changing them all changes no weight."""
    outs = []
    for name, override in (
        ("a", {}),
        ("b", {"loss": {"type": "sortino", "lambda_bias": 0.9}, "sim": {"commission": 0.002, "funding": False}}),
    ):
        root = tmp_path / name
        shutil.copytree(prepared / "data_source" / "split", root / "data_source" / "split")
        params = tiny_params(**override)
        params["train"]["epochs"] = 2
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        done = stage("train_proxy", root)
        assert done.returncode == 0, done.stderr[-3000:]
        (best,) = (root / "outputs" / "proxy").glob("*/*/seed_42/best.pt")  # <group>/<data digest>/seed_42
        outs.append(checkpoint.load(best)["model_state"])
    assert outs[0].keys() == outs[1].keys()
    for key in outs[0]:
        torch.testing.assert_close(outs[0][key], outs[1][key], rtol=0, atol=0)


def test_forecaster_shares_the_policy_backbone_and_dense_layers() -> None:
    from diffquant.model.policy import PolicyNetwork

    cfg = ModelConfig()
    policy, proxy = PolicyNetwork(cfg, 6, 96), Forecaster(cfg, 6, 96)
    shapes = {k: v.shape for k, v in policy.state_dict().items() if k.startswith("backbone.")}
    assert shapes == {k: v.shape for k, v in proxy.state_dict().items() if k.startswith("backbone.")}
    assert [m.out_features for m in proxy.mlp if isinstance(m, torch.nn.Linear)] == list(cfg.head.dense)
