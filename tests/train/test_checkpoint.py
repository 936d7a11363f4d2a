"""Checkpoints: weights-only round trip, corrupt files, foreign configurations and pickled code are refused."""

from __future__ import annotations

import random

import pytest
import torch

from diffquant.config import HeadConfig, ITransformerConfig, ModelConfig
from diffquant.model.policy import PolicyNetwork
from diffquant.train import checkpoint
from diffquant.train.checkpoint import CheckpointError

NAMES = ["open", "high", "low", "close", "volume", "rolling_vol"]
MODEL = ModelConfig(
    itransformer=ITransformerConfig(d_model=8, n_heads=2, n_layers=1, d_ff=16), head=HeadConfig(dense=[8])
)
CTX = 16


def trained_state() -> tuple[PolicyNetwork, dict]:
    """A state as the trainer writes it: weights, AdamW and scheduler state, history, spec."""
    torch.manual_seed(0)
    model = PolicyNetwork(MODEL, len(NAMES), CTX)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)
    loss = model(torch.randn(4, CTX, len(NAMES)), torch.zeros(4), torch.zeros(4))[0].sum()
    loss.backward()
    opt.step()
    sched.step()
    spec = checkpoint.policy_spec(MODEL, NAMES, CTX)
    state = {
        "model_state": model.state_dict(),
        "optimizer_state": opt.state_dict(),
        "scheduler_state": sched.state_dict(),
        "epoch": 1,
        "history": [{"epoch": 1, "lr": 1e-3, "train_loss": 0.5, "val_sharpe": float("nan")}],
        "spec": {"policy": spec, "seed": 42},
        "best_epoch": None,
        "best_score": None,
    }
    return model, state


def test_round_trip_with_weights_only(tmp_path):
    model, state = trained_state()
    path = tmp_path / "sub" / "last.pt"
    checkpoint.save(path, state)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind
    loaded = checkpoint.load(path)
    assert loaded["spec"] == state["spec"] and loaded["best_epoch"] is None and loaded["epoch"] == 1
    assert loaded["history"][0]["train_loss"] == 0.5
    assert loaded["optimizer_state"]["state"][0]["step"] == 1
    rebuilt = checkpoint.build_policy(loaded, path, expected=checkpoint.policy_spec(MODEL, NAMES, CTX))
    for name, tensor in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name
    x = torch.randn(3, CTX, len(NAMES))
    model.eval()
    rebuilt.eval()
    torch.testing.assert_close(
        rebuilt(x, torch.zeros(3), torch.zeros(3)), model(x, torch.zeros(3), torch.zeros(3)), rtol=0, atol=0
    )


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"best\.pt: checkpoint not found; run the train stage"):
        checkpoint.load(tmp_path / "best.pt")


@pytest.mark.parametrize("damage", ["random", "truncated", "empty", "flipped"])
def test_corrupt_file_is_refused_naming_it(tmp_path, damage):
    _, state = trained_state()
    path = tmp_path / f"{damage}.pt"
    checkpoint.save(path, state)
    data = path.read_bytes()
    if damage == "random":
        data = random.Random(0).randbytes(4096)
    elif damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = b""
    else:  # a corrupted byte inside the pickled record (zip member CRCs are checked)
        i = data.index(b"data.pkl") + 200
        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as err:
        checkpoint.load(path)
    assert str(path) in str(err.value) and "re-run the train stage" in str(err.value)


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"model_state": {}, "policy_spec": {}, "x": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt: not a readable checkpoint \(UnpicklingError"):
        checkpoint.load(path)
    assert not marker.exists()
    # the file is a valid pickle: without weights_only the payload would have run
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    ("names", "context", "differs"),
    [
        ([*NAMES[:-1], "typical_price"], CTX, "feature_names"),
        (NAMES, 32, "context"),
        (NAMES[:5], 32, "feature_names, context"),
    ],
)
def test_foreign_configuration_is_refused_naming_what_differs(tmp_path, names, context, differs):
    _, state = trained_state()
    expected = checkpoint.policy_spec(MODEL, names, context)
    with pytest.raises(CheckpointError, match=rf"differs in: {differs}\);") as err:
        checkpoint.build_policy(state, tmp_path / "best.pt", expected=expected)
    assert "best.pt" in str(err.value)


def test_model_config_mismatch_and_foreign_files(tmp_path):
    _, state = trained_state()
    other = ModelConfig(
        itransformer=ITransformerConfig(d_model=16, n_heads=2, n_layers=1, d_ff=16), head=HeadConfig(dense=[8])
    )
    with pytest.raises(CheckpointError, match=r"differs in: model\)"):
        checkpoint.build_policy(state, tmp_path / "a.pt", expected=checkpoint.policy_spec(other, NAMES, CTX))
    with pytest.raises(CheckpointError, match="no spec/model_state inside"):
        checkpoint.build_policy({"weights": {}}, tmp_path / "a.pt")
    # a spec that claims the architecture but weights of another shape
    bad = {**state, "spec": {**state["spec"], "policy": checkpoint.policy_spec(other, NAMES, CTX)}}
    with pytest.raises(CheckpointError, match=r"a\.pt: weights do not fit the policy"):
        checkpoint.build_policy(bad, tmp_path / "a.pt")
