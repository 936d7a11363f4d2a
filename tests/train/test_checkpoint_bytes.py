"""Checkpoint bytes depend on content only: a resumed run writes the files of an uninterrupted one (so ``dvc.lock``
does not change after a kill and a restart), and equal states give equal bytes whatever objects they share.

The cause this guards: pickle writes an object it has met before as a back-reference, so the bytes of a state depend
on which of its parts are one object. A resumed run's history holds the strings unpickled from ``last.pt`` beside the
interned keys of the records added since; an uninterrupted run's holds only the latter.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from diffquant.config import TrainConfig
from diffquant.train import checkpoint
from diffquant.train.resume import ResumeSpec
from diffquant.train.trainer import BEST, FINAL, LAST, fit_task

CFG = TrainConfig(epochs=4, batch_size=16, lr=3e-3, warmup_epochs=1, val_freq=1, device="cpu")
FILES = (LAST, BEST, FINAL)


class Interrupted(Exception):
    """Stands for a kill between two epochs."""


class Regression:
    """A tiny ``EpochTask``: least squares on fixed random data, batches drawn by the trainer's permutation."""

    n_items, batch_size = 64, CFG.batch_size

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(self.n_items, 6, generator=g)
        self.y = self.x @ torch.randn(6, 1, generator=g) + 0.1 * torch.randn(self.n_items, 1, generator=g)
        self._losses: list[float] = []

    def loss(self, model: nn.Module, idx: Tensor) -> Tensor:
        noise = 0.01 * torch.randn(len(idx), 6)  # draws from torch's RNG, as the policy's mirroring does
        loss = nn.functional.mse_loss(model(self.x[idx] + noise), self.y[idx])
        self._losses.append(loss.item())
        return loss

    def summary(self) -> dict[str, float]:
        out, self._losses = {"train_loss": float(np.mean(self._losses))}, []
        return out


class LowestMse:
    """Selection: the check with the lowest val MSE."""

    def score(self, val: dict[str, float]) -> float | None:
        return -val["mse"]

    def fallback(self, val: dict[str, float]) -> float:
        return -val["mse"]


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))


def _train(out: Path, seed: int, model_seed: int | None = None, stop_after: int | None = None) -> None:
    """One seed's ``fit_task`` into ``out``; a new model each call (as a new process builds), resuming from ``last.pt``
    when there is one; ``stop_after`` raises :class:`Interrupted` after that epoch."""
    task = Regression()

    def validate(model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"mse": float(nn.functional.mse_loss(model(task.x), task.y))}

    def on_epoch(record: dict) -> None:
        if record["epoch"] == stop_after:
            raise Interrupted

    spec = ResumeSpec({"net": [6, 8, 1]}, seed, {"train": dataclasses.asdict(CFG)})
    model = _model(seed if model_seed is None else model_seed)
    fit_task(model, task, validate, LowestMse(), CFG, seed, out, spec, on_epoch=on_epoch, progress=False)


def _bytes(root: Path, seed: int) -> dict[str, bytes]:
    return {name: (root / f"seed_{seed}" / name).read_bytes() for name in FILES}


def test_resumed_and_uninterrupted_runs_write_identical_checkpoint_bytes(tmp_path: Path) -> None:
    """Two seeds: the first finishes, the second is stopped after epoch 2; the restart resumes both (the first at its
    end, which rewrites its final.pt from the loaded state) and must leave every file as the uninterrupted run did."""
    for seed in (1, 2):
        _train(tmp_path / "clean" / f"seed_{seed}", seed)

    _train(tmp_path / "killed" / "seed_1", 1)
    with pytest.raises(Interrupted):
        _train(tmp_path / "killed" / "seed_2", 2, stop_after=2)
    assert checkpoint.load(tmp_path / "killed" / "seed_2" / LAST)["epoch"] == 2
    for seed in (1, 2):  # the restart: other initial weights, which the checkpoints must overwrite
        _train(tmp_path / "killed" / f"seed_{seed}", seed, model_seed=99)

    for seed in (1, 2):
        clean, killed = _bytes(tmp_path / "clean", seed), _bytes(tmp_path / "killed", seed)
        assert clean == killed, f"seed {seed}: {[n for n in FILES if clean[n] != killed[n]]} differ in bytes"
    best = checkpoint.load(tmp_path / "killed" / "seed_2" / BEST)
    assert best["best_epoch"] > 2  # not vacuous: best.pt was written by the restart, its history partly loaded


def _state() -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    history = [{"epoch": e, "lr": 1e-3, "train_loss": 0.5 / e, "val_sharpe": math.nan} for e in (1, 2)]
    return {
        "model_state": model.state_dict(),
        "optimizer_state": opt.state_dict(),
        "epoch": 2,
        "history": history,
        "spec": {"policy": {"names": ["open", "close"]}, "seed": 42},
    }


def _raw(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _saved(path: Path, state: dict) -> bytes:
    checkpoint.save(path, state)
    return path.read_bytes()


def _fresh(s: str) -> str:
    """An equal string that is another object (as one unpickled from a checkpoint is)."""
    copy = "".join(list(s))
    assert copy == s and (len(s) < 2 or copy is not s)
    return copy


def test_equal_states_give_equal_bytes_whatever_they_share(tmp_path: Path) -> None:
    state = _state()
    reference = _saved(tmp_path / "a.pt", state)
    assert _saved(tmp_path / "b.pt", state) == reference  # the same state twice

    # Equal strings as distinct objects (a resumed history): plain torch.save writes other bytes, save does not.
    history = [{_fresh(k): v for k, v in rec.items()} for rec in state["history"]]
    renamed = {**state, "history": history}
    assert _raw(renamed) != _raw(state)
    assert _saved(tmp_path / "c.pt", renamed) == reference

    # A shared container (the same list object twice) is written as if it were two equal ones.
    names = state["spec"]["policy"]["names"]
    shared = {**state, "spec": {"policy": {"names": names}, "seed": 42, "aliases": names}}
    unshared = {**state, "spec": {"policy": {"names": list(names)}, "seed": 42, "aliases": list(names)}}
    assert _raw(shared) != _raw(unshared)
    assert _saved(tmp_path / "d.pt", shared) == _saved(tmp_path / "e.pt", unshared)

    # Tensors that are views (offset into, or strided over, a larger storage) or share one storage, against
    # contiguous copies of their own: the same bytes, and only the view's values are written.
    base = torch.arange(24, dtype=torch.float32)
    views = {
        "offset": base[4:8],
        "strided": base.view(4, 6)[:, 1],
        "transposed": base.view(4, 6).t(),
        "alias": base[4:8],
        "scalar": base[5],
    }
    copies = {k: v.clone().contiguous() for k, v in views.items()}
    assert _raw({"t": views}) != _raw({"t": copies})
    viewed = _saved(tmp_path / "f.pt", {"t": views})
    assert viewed == _saved(tmp_path / "g.pt", {"t": copies})
    big = torch.zeros(100_000)
    assert len(_saved(tmp_path / "big.pt", {"t": big[:4]})) < 100_000 < len(_raw({"t": big[:4]}))
    loaded = checkpoint.load(tmp_path / "f.pt")["t"]
    assert all(torch.equal(loaded[k], views[k]) and loaded[k].is_contiguous() for k in views)

    # numpy scalars are written as the Python numbers they equal.
    as_numpy = {**state, "epoch": np.int64(2), "history": [{**r, "lr": np.float64(r["lr"])} for r in history]}
    assert _saved(tmp_path / "h.pt", as_numpy) == reference


def test_canonical_state_still_loads_into_the_model(tmp_path: Path) -> None:
    """Order, OrderedDict and its ``_metadata`` (module versions) survive; loading stays weights-only."""
    state = _state()
    checkpoint.save(tmp_path / "x.pt", state)
    loaded = checkpoint.load(tmp_path / "x.pt")
    assert isinstance(loaded["model_state"], OrderedDict)
    assert list(loaded["model_state"]) == list(state["model_state"])
    assert loaded["model_state"]._metadata == state["model_state"]._metadata
    assert list(loaded["optimizer_state"]["param_groups"][0]) == list(state["optimizer_state"]["param_groups"][0])
    assert repr(loaded["history"]) == repr(state["history"])  # repr: nan != nan
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    model.load_state_dict(loaded["model_state"])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state["model_state"].items())
