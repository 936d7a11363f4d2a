"""A policy bundle: everything that turns raw bars into the position to hold, exactly as the walk-forward engine does.

Raw bars (open_time, OHLCV[, num_trades], and the columns the feature families read: ``model_columns``) -> the
families' features -> each member's ``policy_decisions`` (the engine's batched path) -> the member's tuned hysteresis
-> the book holds the mean of the members' executed positions, which is the evaluate stage's seed ensemble (one seed
is a bundle of one member).

Features are computed from the bars given, so the first ``warmup`` bars only warm the rolling windows up
(``diffquant.data.features.warmup_bars``); the first decision is at the close of bar ``warmup + context - 1`` and the
policy's own recursion starts flat there, as the engine's does at the first full window of a series. Bars from
``s - warmup`` of a series' raw bars therefore give the engine's decisions for that series bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffquant.config import FeatureConfig, Hysteresis, SimConfig, build_section
from diffquant.data.aggregate import check_grid
from diffquant.data.contracts import MINUTE_MS, to_ms, validate_bars
from diffquant.data.features import feature_columns, features_from_inputs, warmup_bars
from diffquant.data.inputs import inputs_from_table, model_columns
from diffquant.data.splits import Series
from diffquant.errors import ConfigError, DataError
from diffquant.evaluate.hysteresis import apply_hysteresis
from diffquant.evaluate.member import Member
from diffquant.evaluate.walk_forward import encode_windows, policy_decisions
from diffquant.float_mode import denormals_flushed
from diffquant.io import read_json, write_json
from diffquant.model.band import band_width
from diffquant.train import checkpoint

MANIFEST = "bundle.json"
FUNDING_COLUMN = "funding_rate"  # optional in the input: the rate charged during each bar (the paper trader books it)


@dataclass(frozen=True)
class MemberState:
    """Where a member stands after a decision: its recursion state and its executed position."""

    prev: float = 0.0  # its last raw position
    delta: float = 0.0  # its last raw change
    executed: float = 0.0  # after its hysteresis

    def as_list(self) -> list[float]:
        return [self.prev, self.delta, self.executed]


def book_position(states: Sequence[MemberState]) -> float:
    """The book's position: the mean of the members' executed positions, reduced over a (members, 1) array as
    ``decide`` (and the evaluate stage) reduce (members, bars), so the sums run in the same order."""
    return float(np.mean([[s.executed] for s in states], axis=0)[0])


@dataclass(frozen=True)
class Step:
    """One incremental decision: the members' mean raw decision and gate, the book's position, the new states."""

    raw: float
    gate: float
    position: float
    states: tuple[MemberState, ...]


class BundleParts:
    """What every bundle (one asset's, a portfolio's) derives from its members and feature pipeline, and how it is
    written: the members' checkpoints beside a JSON manifest. Mixed into the frozen dataclasses below."""

    members: tuple[Member, ...]
    features: FeatureConfig
    timeframe_minutes: int
    sim: SimConfig
    manifest_file = MANIFEST

    @property
    def context(self) -> int:
        return self.members[0].policy.context

    @property
    def warmup(self) -> int:
        return warmup_bars(self.features, self.timeframe_minutes)

    @property
    def min_bars(self) -> int:
        """Bars needed for one decision (of each asset): the rolling windows' warm-up, then one full context."""
        return self.warmup + self.context

    @property
    def input_columns(self) -> list[str]:
        """The columns the input table needs besides the bars: what the feature families read (its schema)."""
        return model_columns(self.features)

    @property
    def band(self) -> float | None:
        """The members' mean learned band width (what their book trades), or None when the band is not learned."""
        widths = [band_width(m.policy) for m in self.members]
        return None if widths[0] is None else float(np.mean(widths))

    def fingerprint(self) -> str:
        """sha256 of the manifest and every weight: what a paper ledger is bound to, whatever URI named the model."""
        digest = hashlib.sha256(json.dumps(self.manifest(), sort_keys=True).encode())
        for member in self.members:
            for name, tensor in member.policy.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def manifest(self) -> dict[str, object]:
        """Everything but the weights, as JSON: members with their hysteresis, features, timeframe, costs."""
        return {
            "members": [{"name": m.name, "hysteresis": dataclasses.asdict(m.hysteresis)} for m in self.members],
            "features": dataclasses.asdict(self.features),
            "timeframe_minutes": self.timeframe_minutes,
            "sim": dataclasses.asdict(self.sim),
        }

    def save(self, folder: Path, checkpoints: dict[str, Path]) -> Path:
        """Write the members' checkpoint files and the manifest into ``folder`` (an MLflow model's artifacts)."""
        folder.mkdir(parents=True, exist_ok=True)
        for m in self.members:
            shutil.copyfile(checkpoints[m.name], folder / f"{m.name}.pt")
        write_json(folder / self.manifest_file, self.manifest())
        return folder


def read_bundle(
    folder: Path, manifest_file: str, producer: str
) -> tuple[dict[str, Any], tuple[Member, ...], dict[str, Any]]:
    """A saved bundle's manifest, its members and the settings every bundle takes (features, timeframe_minutes,
    sim) as keyword arguments."""
    folder = Path(folder)
    manifest = read_json(folder / manifest_file, producer)
    members = tuple(
        Member(m["name"], checkpoint.load_policy(folder / f"{m['name']}.pt"), Hysteresis(**m["hysteresis"]))
        for m in manifest["members"]
    )
    settings = {
        "features": build_section(FeatureConfig, manifest["features"], "features"),
        "timeframe_minutes": int(manifest["timeframe_minutes"]),
        "sim": build_section(SimConfig, manifest["sim"], "sim"),
    }
    return manifest, members, settings


@dataclass(frozen=True)
class PolicyBundle(BundleParts):
    """The members of a book with the feature pipeline and costs they were trained and judged with."""

    members: tuple[Member, ...]
    features: FeatureConfig
    timeframe_minutes: int
    sim: SimConfig

    @property
    def member_names(self) -> list[str]:
        return [m.name for m in self.members]

    def decide(self, bars: pd.DataFrame, positions: Sequence[float] | None = None) -> pd.DataFrame:
        """Decisions at the close of every bar from ``min_bars - 1`` on, oldest first.

        ``positions``: each member's executed position before the first decision (flat by default), as the
        previous call's last ``position_<member>`` columns give them. Returns ``open_time``, ``raw_position`` and
        ``gate`` (the members' means), ``position`` (the book: the mean of the members' executed positions) and
        ``position_<member>`` for each member. At a decision cadence (``model.decision_every``) each bar holds its
        last decision bar's. ``position`` is the book's decision: the execution layer's band and volatility target
        (``sim``) act after it, where the book is traded (the walk-forward engine, the paper trader).
        """
        series = self.series(bars)
        start = self.context - 1
        current = self._positions(positions)
        raw, gate, executed = [], [], []
        for member, pos in zip(self.members, current, strict=True):
            with denormals_flushed():  # the mode the evaluate stage judged it in
                d = policy_decisions(member.policy, series)
            raw.append(d.raw[start:])
            gate.append(d.gate[start:])
            executed.append(apply_hysteresis(d.raw[start:], member.hysteresis, pos))
        out = pd.DataFrame(
            {
                "open_time": pd.to_datetime(series.open_time[start:], unit="ms", utc=True),
                "raw_position": np.mean(raw, axis=0),
                "gate": np.mean(gate, axis=0),
                "position": np.mean(executed, axis=0),  # as the evaluate stage's seed ensemble
            }
        )
        for member, values in zip(self.members, executed, strict=True):
            out[f"position_{member.name}"] = values
        return out

    def step(self, tail: pd.DataFrame, states: Sequence[MemberState]) -> Step:
        """The decision at the close of the last bar of ``tail`` (its last ``min_bars`` bars are used), continuing
        each member from ``states``: what ``decide`` gives for that bar, computed from that bar's window alone.
        ``tail``: canonical bars its caller has validated (the paper trader checks every bar it is fed).

        The window's logits come from a batch of one; ``decide`` (like the engine) batches thousands, and float32
        matrix products may round differently with the batch: the two agree to the network's float32 precision.
        """
        if any(m.policy.series for m in self.members):
            raise ConfigError(
                "a series-path policy (model.series: true) decides from every bar since its series began, not from "
                "one window: the paper trader cannot continue it bar by bar; paper-trade a window-path policy"
            )
        window = tail.iloc[-self.min_bars :]
        series = self._feature_series(window, window)
        raws, gates, new = [], [], []
        for member, state in zip(self.members, states, strict=True):
            with denormals_flushed():
                logits = encode_windows(member.policy, series, batch_size=1)[-1:]
            raw, gate = member.policy.head.scan_numpy(logits, (state.prev, state.delta))
            executed = apply_hysteresis(raw, member.hysteresis, state.executed)
            raws.append(raw)
            gates.append(gate)
            new.append(MemberState(float(raw[0]), float(raw[0] - state.prev), float(executed[0])))
        return Step(float(np.mean(raws, axis=0)[0]), float(np.mean(gates, axis=0)[0]), book_position(new), tuple(new))

    def series(self, table: pd.DataFrame) -> Series:
        """The input table (raw bars and the families' columns) -> the feature series the members decide on: rows
        from the first bar past the warm-up.

        Refuses, naming the row or column, what is not a table of canonical bars on the model's timeframe, oldest
        first, with the columns the features read.
        """
        where = "policy input bars"
        checked = checked_bars(table, self.features, self.timeframe_minutes, self.context, where)
        return self._feature_series(table, checked)

    def _feature_series(self, table: pd.DataFrame, bars: pd.DataFrame) -> Series:
        """``series`` of an input table whose bars are already validated (canonical, datetime open_time, on grid)."""
        n = self.members[0].policy.n_features
        return feature_series(table, bars, self.features, self.timeframe_minutes, n)

    def _positions(self, positions: Sequence[float] | None) -> list[float]:
        if positions is None:
            return [0.0] * len(self.members)
        values = [float(p) for p in positions]
        if len(values) != len(self.members) or not all(np.isfinite(v) and abs(v) <= 1.0 for v in values):
            raise DataError(f"positions {values}: give one executed position in [-1, 1] per member {self.member_names}")
        return values

    @classmethod
    def load(cls, folder: Path) -> PolicyBundle:
        _, members, settings = read_bundle(folder, MANIFEST, "an MLflow policy model (evaluate stage)")
        return cls(members=members, **settings)


def checked_bars(
    table: pd.DataFrame, features: FeatureConfig, timeframe_minutes: int, context: int, where: str
) -> pd.DataFrame:
    """The bars of an input table (its other columns: ``funding_rate`` and what the features read) as canonical
    bars on the timeframe's grid, oldest first, enough for one decision (the features' warm-up + ``context``
    rows); a ``DataError`` naming the row, the column or the shortfall otherwise."""
    others = {FUNDING_COLUMN, *model_columns(features)}
    bars = validate_bars(table.drop(columns=[c for c in table.columns if c in others]), where)
    check_grid(to_ms(bars["open_time"]), timeframe_minutes, where, "send bars of the model's timeframe")
    warmup = warmup_bars(features, timeframe_minutes)
    if len(bars) < warmup + context:
        raise DataError(
            f"{where}: {len(bars)} bars given; this policy needs at least {warmup + context}, oldest first "
            f"({warmup} to warm the features up, then a context of {context})"
        )
    return bars


def feature_series(
    table: pd.DataFrame,
    bars: pd.DataFrame,
    features: FeatureConfig,
    timeframe_minutes: int,
    n_features: int,
    where: str = "policy input bars",
) -> Series:
    """An input table and its checked bars -> the feature series a policy decides on, from the first bar past the
    features' warm-up (the series' funding is zero: a decision never reads it)."""
    warmup = warmup_bars(features, timeframe_minutes)
    inputs = inputs_from_table(table, bars, features, where)
    table = features_from_inputs(inputs, features, timeframe_minutes).iloc[warmup - 1 :]
    names = feature_columns(table)
    if len(names) != n_features:
        raise DataError(f"{where}: the features give {len(names)} channels ({names}); the policy takes {n_features}")
    return Series(
        features=table[[f"x_{n}" for n in names]].to_numpy(np.float32),
        close=table["close"].to_numpy(np.float64),
        funding=np.zeros(len(table)),
        open_time=to_ms(table["open_time"]),
        start=len(table) - 1,
        timeframe_ms=timeframe_minutes * MINUTE_MS,
        feature_names=names,
    )
