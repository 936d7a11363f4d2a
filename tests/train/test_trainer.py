"""The training loop: determinism, exact resume, spec guard, checkpoint selection, lr schedule, input checks."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from diffquant.config import HeadConfig, ITransformerConfig, LossConfig, ModelConfig, SimConfig, TrainConfig
from diffquant.data.features import mirror_spec
from diffquant.model.policy import PolicyNetwork
from diffquant.sim.losses import Objective
from diffquant.train import checkpoint
from diffquant.train.episodes import EpisodeBatch, episodes_from_arrays
from diffquant.train.resume import ResumeSpec
from diffquant.train.trainer import BEST, FINAL, LAST, fit

CTX, H = 16, 8
NAMES = ["open", "high", "low", "close", "volume", "rolling_vol"]
MODEL = ModelConfig(
    itransformer=ITransformerConfig(d_model=8, n_heads=2, n_layers=1, d_ff=16), head=HeadConfig(dense=[8])
)
SIM = SimConfig()
OBJECTIVE = Objective(LossConfig(), SIM.smooth_abs_eps)
TRAIN = TrainConfig(
    epochs=3,
    batch_size=16,
    lr=3e-3,
    warmup_epochs=1,
    val_freq=1,
    select_min_rebalances=5,
    mirror=True,
    mirror_prob=0.5,
    device="cpu",
)
SPEC = ResumeSpec(checkpoint.policy_spec(MODEL, NAMES, CTX), 7, {"train": dataclasses.asdict(TRAIN)})


def synthetic(n: int, seed: int) -> EpisodeBatch:
    rng = np.random.default_rng(seed)
    returns = 0.003 * rng.standard_normal((n, CTX + H))
    close = 30_000 * np.cumprod(1 + returns, axis=1)
    features = rng.standard_normal((n, CTX + H, len(NAMES))).astype(np.float32)
    features[..., 3] = 100 * returns
    return episodes_from_arrays(features, close, 1e-4 * rng.standard_normal((n, CTX + H)), CTX)


EPISODES = synthetic(64, 0)
VAL = synthetic(16, 1)
MIRROR = tuple(torch.as_tensor(a) for a in mirror_spec(NAMES))


def new_model(seed: int = 0) -> PolicyNetwork:
    torch.manual_seed(seed)
    return PolicyNetwork(MODEL, len(NAMES), CTX)


def validate(model: PolicyNetwork) -> dict[str, float]:
    """A deterministic function of the weights, like a walk-forward."""
    model.eval()
    with torch.no_grad():
        pos, _ = model.rollout(VAL.features, H, True)
        pnl = pos * VAL.returns
    return {"sharpe": float(pnl.mean() / pnl.std()), "rebalances": 10.0}


def run(out_dir, model=None, cfg=TRAIN, spec=SPEC, validate_fn=validate, on_epoch=None, seed=7, on_check=None):
    model = new_model() if model is None else model
    result = fit(
        model,
        EPISODES,
        validate_fn,
        OBJECTIVE,
        SIM,
        cfg,
        H,
        seed,
        out_dir,
        spec,
        MIRROR,
        on_epoch=on_epoch,
        on_check=on_check,
        progress=False,
    )
    return model, result


def history(result) -> list[dict]:
    return [{k: v for k, v in rec.items() if k != "seconds"} for rec in result.history]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_same_seed_gives_identical_runs(tmp_path):
    m1, r1 = run(tmp_path / "a")
    m2, r2 = run(tmp_path / "b")
    assert history(r1) == history(r2)
    assert_same_weights(m1.state_dict(), m2.state_dict())
    assert [rec["epoch"] for rec in r1.history] == [1, 2, 3]
    assert all(math.isfinite(rec["train_loss"]) and "val_sharpe" in rec for rec in r1.history)
    # the seed matters (a test that could not fail otherwise)
    _, r3 = run(tmp_path / "c", seed=8)
    assert history(r3) != history(r1)


class Interrupted(Exception):
    pass


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    cfg = dataclasses.replace(TRAIN, epochs=4)
    spec = dataclasses.replace(SPEC, training={"train": dataclasses.asdict(cfg)})
    full, r_full = run(tmp_path / "full", cfg=cfg, spec=spec)

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(tmp_path / "cut", cfg=cfg, spec=spec, on_epoch=stop_after_two)
    assert checkpoint.load(tmp_path / "cut" / LAST)["epoch"] == 2
    assert not (tmp_path / "cut" / FINAL).exists()

    # a new process: another initialisation, which the checkpoint must overwrite
    resumed, r_resumed = run(tmp_path / "cut", model=new_model(seed=123), cfg=cfg, spec=spec)
    assert r_resumed.resumed_from == 2
    assert history(r_resumed) == history(r_full)
    assert_same_weights(resumed.state_dict(), full.state_dict())
    final_a = checkpoint.load(tmp_path / "full" / FINAL)
    final_b = checkpoint.load(tmp_path / "cut" / FINAL)
    assert_same_weights(final_a["optimizer_state"]["state"][0], final_b["optimizer_state"]["state"][0])
    assert (r_resumed.best_epoch, r_resumed.best_score) == (r_full.best_epoch, r_full.best_score)


def test_last_checkpoint_of_another_spec_or_unreadable_is_ignored(tmp_path):
    cfg = dataclasses.replace(TRAIN, epochs=2)
    run(tmp_path / "x", cfg=cfg)
    other = dataclasses.replace(SPEC, policy=checkpoint.policy_spec(MODEL, [*NAMES[:-1], "typical_price"], CTX))
    fresh, r_fresh = run(tmp_path / "fresh", cfg=cfg, spec=other)
    again, r_again = run(tmp_path / "x", cfg=cfg, spec=other)
    assert r_again.resumed_from == 0 and [rec["epoch"] for rec in r_again.history] == [1, 2]
    assert_same_weights(again.state_dict(), fresh.state_dict())
    # the same spec does resume (the comparison above is not vacuous)
    _, r_same = run(tmp_path / "x", cfg=cfg, spec=other)
    assert r_same.resumed_from == 2 and r_same.history == r_again.history
    # an unreadable (or empty) last.pt: training starts over
    for junk in (b"not a checkpoint", b""):
        (tmp_path / "x" / LAST).write_bytes(junk)
        _, r_corrupt = run(tmp_path / "x", cfg=cfg, spec=other)
        assert r_corrupt.resumed_from == 0 and history(r_corrupt) == history(r_fresh)


def test_a_model_that_never_trades_is_never_best(tmp_path):
    def idle(model):
        return {"sharpe": 9.9, "rebalances": 0.0}  # flat: a high (or zero) Sharpe without trading

    model, result = run(tmp_path, validate_fn=idle)
    assert result.best_epoch is None and result.best_score is None
    assert result.selected_score == 9.9  # none qualified: the last check's Sharpe is what the run reports
    assert [rec["val_sharpe"] for rec in result.history] == [9.9] * 3
    best, final = checkpoint.load(tmp_path / BEST), checkpoint.load(tmp_path / FINAL)
    assert_same_weights(best["model_state"], final["model_state"])
    assert_same_weights(best["model_state"], model.state_dict())
    assert best["best_epoch"] is None


def test_best_is_the_highest_qualifying_check(tmp_path):
    cfg = dataclasses.replace(TRAIN, epochs=5)
    script = iter(
        [
            {"sharpe": 1.0, "rebalances": 10.0},
            {"sharpe": 5.0, "rebalances": 4.0},  # best Sharpe, too few trades
            {"sharpe": 2.0, "rebalances": 5.0},  # <- best qualifying
            {"sharpe": float("nan"), "rebalances": 50.0},
            {"sharpe": 1.5, "rebalances": 50.0},
        ]
    )
    weights = {}

    def remember(record):
        weights[record["epoch"]] = {k: v.clone() for k, v in model.state_dict().items()}

    model = new_model()
    checks = []
    _, result = run(
        tmp_path,
        model,
        cfg,
        validate_fn=lambda m: next(script),
        on_epoch=remember,
        on_check=lambda e, v: checks.append((e, v)),
    )
    assert (result.best_epoch, result.best_score, result.selected_score) == (3, 2.0, 2.0)
    # the running selection the pruner sees: the last check's Sharpe until one qualifies, then the best so far
    assert checks == [(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0), (5, 2.0)]
    best = checkpoint.load(tmp_path / BEST)
    assert best["epoch"] == 3 and best["best_epoch"] == 3
    assert_same_weights(best["model_state"], weights[3])
    assert not all(torch.equal(weights[3][k], weights[5][k]) for k in weights[3])
    assert checkpoint.load(tmp_path / FINAL)["best_epoch"] == 3


def test_lr_follows_warmup_then_cosine(tmp_path):
    cfg = dataclasses.replace(
        TRAIN, epochs=7, lr=1e-2, warmup_epochs=2, warmup_start_factor=0.1, min_lr=1e-4, val_freq=100
    )
    _, result = run(tmp_path, cfg=cfg)
    lrs = [rec["lr"] for rec in result.history]

    def expected(i: int) -> float:  # lr used during epoch i (0-based)
        if i < 2:  # LinearLR: start_factor -> 1 over warmup_epochs
            return 1e-2 * (0.1 + (1 - 0.1) * i / 2)
        t_max = 7 - 2
        return 1e-4 + (1e-2 - 1e-4) * (1 + math.cos(math.pi * (i - 2) / t_max)) / 2

    assert lrs == pytest.approx([expected(i) for i in range(7)], rel=1e-9)
    assert lrs[0] == pytest.approx(1e-3) and lrs[2] == pytest.approx(1e-2)
    # validation ran once, after the last epoch
    assert [("val_sharpe" in rec) for rec in result.history] == [False] * 6 + [True]


def test_batch_larger_than_the_data_is_refused(tmp_path):
    cfg = dataclasses.replace(TRAIN, batch_size=65)
    with pytest.raises(ValueError, match=r"train.batch_size \(65\) is larger than the 64 training samples"):
        run(tmp_path, cfg=cfg)
