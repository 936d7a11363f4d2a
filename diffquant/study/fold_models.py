"""A study's models: each fold's model groups, the folder each trains into, and the grid that trains them.

``train.universe: pooled`` trains one policy (and one MSE proxy) per seed on the samples of every asset of a fold,
``per_asset`` one per asset and seed; a portfolio (``model.kind: portfolio``) trains one book over every asset, beside
the single-asset policies of the same settings (its single-asset-average baseline): the study's kind
(``kinds.study_kind``) says which groups and what each trains. Every seed of every group of every fold is a unit of
the grid runner, so ``train.workers`` processes (or Ray) share the whole study.

Where a group trains is given by ``folder_of(group, kind)``. The chain's train stages use :func:`keyed_folders`:
``<root>/<group>/<digest>``, the digest hashing the train and val arrays the group learns from and is selected on,
so folds that learn from the same data (the ``single`` scheme's test and backtest folds) share one folder and train
once, and a fold or an asset added to a study trains only folders of its own. Inside a folder each seed resumes, or is
already done, by the trainer's resume spec (config, data, code), so a changed config retrains in place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffquant.compute.grid import run_grid, with_unit_threads
from diffquant.compute.units import Kind, Outcome, SeedHooks, Unit, Work
from diffquant.config import Config
from diffquant.data.splits import Samples
from diffquant.study.asset_run import Models
from diffquant.study.fold_data import FoldData
from diffquant.study.kinds import study_kind
from diffquant.train import checkpoint
from diffquant.train.layout import checkpoint_path
from diffquant.train.policy_training import TrainingData, policy_works, prepare_policies
from diffquant.train.proxy_training import prepare_proxies, proxy_works

HooksFor = Callable[[str, str, str], SeedHooks]  # (fold, group, kind) -> hooks of that group's seeds
FolderOf = Callable[["Group", str], Path]  # (group, kind) -> the folder its seeds train into


def pooled_samples(parts: list[Samples]) -> Samples:
    """The samples of several assets as one set (asset after asset; the trainer's shuffling mixes them)."""
    if len(parts) == 1:
        return parts[0]
    cat = {f: np.concatenate([getattr(p, f) for p in parts]) for f in ("features", "close", "funding", "open_time")}
    return Samples(**cat, feature_names=parts[0].feature_names)


@dataclass(frozen=True, eq=False)
class Group:
    """One model group of one fold: the assets it trains on and the config it trains with."""

    fold: FoldData
    name: str
    symbols: tuple[str, ...]
    cfg: Config

    @property
    def digest(self) -> str:
        """What the group learns from and is selected on: its assets' train and val arrays, never test."""
        return hashlib.sha256("".join(self.fold.assets[a].model_digest for a in self.symbols).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """``<fold>/<group>``: the group in logs, unit names and MLflow."""
        return f"{self.fold.fold.name}/{self.name}"

    def training_data(self) -> TrainingData:
        parts = [self.fold.assets[a] for a in self.symbols]
        books = tuple(a.train_series for a in parts)  # a portfolio's episodes, or one asset's at a cadence
        samples = pooled_samples([a.samples for a in parts])
        return TrainingData(samples, tuple(a.val for a in parts), self.digest, f"fold {self.label}", books)


def fold_groups(cfg: Config, data: FoldData) -> list[Group]:
    """The fold's model groups, as its study kind groups its assets."""
    kind = study_kind(cfg)
    return [Group(data, g, tuple(s), kind.group_config(g)) for g, s in kind.model_groups(list(data.assets)).items()]


def keyed_folders(roots: dict[str, Path]) -> FolderOf:
    """The chain's layout: ``<roots[kind]>/<group>/<digest>`` (see the module docstring)."""
    return lambda group, kind: roots[kind] / group.name / group.digest


def group_works(group: Group, kind: Kind, folder: Path, hooks: SeedHooks) -> list[Work]:
    """The units of one group and kind, after their checks (a refused config leaves nothing behind)."""
    if kind == "policy":
        data = group.training_data()
        prepare_policies(group.cfg, data, folder, hooks)
        return list(policy_works(group.cfg, data, folder, group.label))
    parts = [group.fold.assets[a] for a in group.symbols]
    works = proxy_works(group.cfg, [a.train_series for a in parts], [a.val for a in parts], folder, group.label)
    prepare_proxies(works, folder, hooks)
    return list(works)


def train_groups(
    cfg: Config, folds: Sequence[FoldData], folder_of: FolderOf, hooks_for: HooksFor, only: Sequence[Kind] = ()
) -> dict[Unit, Outcome]:
    """Every unit of every fold's groups (of the kinds in ``only``, or all the config trains) as one grid; a folder
    two folds share trains once. ``train.threads`` is resolved here, the driver, before any unit exists."""
    cfg = with_unit_threads(cfg)
    works: list[Work] = []
    hooks: dict[Unit, SeedHooks] = {}
    seen: set[Path] = set()
    for data in folds:
        for group in fold_groups(cfg, data):
            for kind in [k for k in study_kind(group.cfg).trains() if not only or k in only]:
                folder = folder_of(group, kind)
                if folder in seen:
                    continue
                seen.add(folder)
                group_hooks = hooks_for(data.fold.name, group.name, kind)
                fresh = group_works(group, kind, folder, group_hooks)
                works += fresh
                hooks.update({w.unit: group_hooks for w in fresh})
    return run_grid(works, hooks.__getitem__, cfg.train)


def load_models(group: Group, folder_of: FolderOf) -> Models:
    """A group's trained seeds at ``eval.checkpoint``: {kind: {seed: model}}."""
    cfg = group.cfg
    names = next(iter(group.fold.assets.values())).samples.feature_names
    expected = checkpoint.policy_spec(cfg.model, names, cfg.window.context)
    load = {"policy": checkpoint.load_policy, "proxy": checkpoint.load_forecaster}
    return {
        k: {
            str(s): load[k](checkpoint_path(folder_of(group, k), s, cfg.eval.checkpoint), expected)
            for s in cfg.train.seeds
        }
        for k in study_kind(cfg).trains()
    }
