"""Tiny policy units on a synthetic market, for the grid tests (importable without mlflow, dvc or optuna)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from diffquant.config import Config, from_dict
from diffquant.data.splits import Samples, Series
from diffquant.train.policy_training import PolicyWork, TrainingData, policy_works
from tests.repo_copy import REPO

TF_MS = 3_600_000


def tiny_config(seeds: list[int], epochs: int = 1) -> Config:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["itransformer"].update(d_model=8, n_heads=1, n_layers=1, d_ff=16)
    raw["model"]["head"]["dense"] = [8]
    raw["window"].update(context=16, horizon=4, stride=4)
    raw["baselines"]["momentum_lookbacks"] = [4, 8]
    raw["train"].update(epochs=epochs, batch_size=8, seeds=seeds, device="cpu", threads=1, mirror=False, val_freq=1)
    return from_dict(raw)


def synthetic_data(samples: int = 64, bars: int = 300) -> tuple[TrainingData, Series]:
    """Random-walk train samples (windows of 20 bars) and a val series of ``bars`` bars."""
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]

    def walk(shape: Any) -> np.ndarray:
        return 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, shape), axis=-1))

    close = walk((samples, 20))
    features = rng.normal(size=(samples, 20, 3)).astype(np.float32)
    train = Samples(features, close, np.zeros_like(close), np.arange(samples), names)
    series = Series(
        rng.normal(size=(bars, 3)).astype(np.float32),
        walk(bars),
        np.zeros(bars),
        np.arange(bars) * TF_MS,
        17,
        TF_MS,
        names,
    )
    return TrainingData(train, (series,), "synthetic"), series


def tiny_works(out: Path, seeds: list[int], epochs: int = 1, samples: int = 64) -> list[PolicyWork]:
    data, _ = synthetic_data(samples)
    return policy_works(tiny_config(seeds, epochs), data, out)
