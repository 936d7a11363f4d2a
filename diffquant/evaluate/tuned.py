"""What threshold-opt hands to evaluate for one asset of one fold (``outputs/thresholds/<fold>/<SYMBOL>.json``): every
choice made on val, typed and defined once.

Per model kind (``policy``, ``proxy``) and seed: the hysteresis traded and the search behind it (every trial's val
Sharpe, which the deflated Sharpe ratio needs); for momentum: the lookback and its candidates' val Sharpes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from diffquant.config import Hysteresis
from diffquant.errors import DataError
from diffquant.io import read_json

PRODUCER = "threshold-opt"
MODEL_KINDS = ("policy", "proxy")


def _key(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


@dataclass(frozen=True)
class TunedModel:
    """One model's hysteresis, chosen on val, and the search that chose it."""

    hysteresis: Hysteresis
    source: str  # "optuna", or "default" when no trial traded often enough
    val_sharpe: float
    val_total_return_pct: float
    val_rebalances: float
    trials: int
    trial_sharpes: list[float]  # every trial's val Sharpe, the configured thresholds first

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        return {**record.pop("hysteresis"), **record}

    @classmethod
    def from_dict(cls, d: Any, at: str = "") -> TunedModel:
        """A ``to_dict`` record; a ``DataError`` naming ``at`` (where it sits in its file) if it is not one."""
        try:
            h = Hysteresis(**{f.name: float(d[f.name]) for f in fields(Hysteresis)})
            rest = {f.name: d[f.name] for f in fields(cls) if f.name != "hysteresis"}
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"entry {at!r} is missing or malformed ({type(exc).__name__}: {exc})") from None
        return cls(hysteresis=h, **rest)


@dataclass(frozen=True)
class MomentumChoice:
    lookback: int  # bars
    val_sharpe: float
    candidate_sharpes: list[float]  # val Sharpe of every lookback in baselines.momentum_lookbacks


@dataclass(frozen=True)
class TunedThresholds:
    """The whole of an asset's thresholds file: for which checkpoint, per kind and seed, and momentum."""

    checkpoint: str  # "best" or "final": the checkpoint the thresholds were tuned for
    policy: dict[str, TunedModel]
    proxy: dict[str, TunedModel]
    momentum: MomentumChoice

    def kind(self, name: str) -> dict[str, TunedModel]:
        return {"policy": self.policy, "proxy": self.proxy}[name]

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "policy": {s: t.to_dict() for s, t in self.policy.items()},
            "proxy": {s: t.to_dict() for s, t in self.proxy.items()},
            "momentum": asdict(self.momentum),
        }

    @classmethod
    def from_dict(cls, raw: Any, at: str = "") -> TunedThresholds:
        """The thresholds of a ``to_dict`` record; a missing or malformed entry is a ``DataError`` naming its key
        (under ``at``, where the record sits in its file)."""
        key = "checkpoint"
        try:
            checkpoint = str(raw[key])
            models = {}
            for kind in MODEL_KINDS:
                key, models[kind] = kind, {}
                for seed, entry in raw[kind].items():
                    models[kind][seed] = TunedModel.from_dict(entry, _key(at, f"{kind}.{seed}"))
            key = "momentum"
            momentum = MomentumChoice(**raw[key])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"entry {_key(at, key)!r} is missing or malformed ({type(exc).__name__}: {exc})") from None
        return cls(checkpoint, models["policy"], models["proxy"], momentum)

    @classmethod
    def load(cls, path: Path) -> TunedThresholds:
        """Read an asset's thresholds file; a missing or malformed entry is a ``DataError`` naming file and key."""
        raw = read_json(path, PRODUCER)
        try:
            return cls.from_dict(raw)
        except DataError as exc:
            raise DataError(f"{path}: {exc}; re-run the {PRODUCER} stage (dvc repro -f {PRODUCER})") from None

    def require(self, path: Path, checkpoint: str, kinds: list[str], seeds: list[str]) -> None:
        """Refuse thresholds tuned for another checkpoint or lacking a model that is to be traded."""
        if self.checkpoint != checkpoint:
            raise DataError(
                f"{path} was tuned for {self.checkpoint}.pt but eval.checkpoint is {checkpoint!r}; re-run the "
                f"{PRODUCER} stage (dvc repro {PRODUCER})"
            )
        missing = [f"{k} seed {s}" for k in kinds for s in seeds if s not in self.kind(k)]
        if missing:
            raise DataError(f"{path} has no thresholds for {', '.join(missing)}; re-run {PRODUCER}")
