"""Checkpoints: plain tensors and numbers only, loaded with ``weights_only=True`` (no pickle code can run).

A checkpoint carries what is needed to rebuild its policy (model config, feature names, context) so a checkpoint
from another configuration is refused with a message instead of failing on a shape mismatch deep inside torch.
"""

from __future__ import annotations

import dataclasses
import io
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from diffquant.config import ModelConfig, build_section
from diffquant.errors import DiffQuantError
from diffquant.io import atomic_path
from diffquant.model.forecaster import Forecaster
from diffquant.model.policy import PolicyNetwork
from diffquant.model.portfolio import PortfolioPolicy, make_policy

M = TypeVar("M", PolicyNetwork, PortfolioPolicy, Forecaster)

PICKLE_PROTOCOL = 2  # torch.save's default, pinned: a torch upgrade changing it must not change the bytes silently


class CheckpointError(DiffQuantError):
    """A checkpoint is missing, corrupt, or belongs to another configuration."""


def policy_spec(model_cfg: ModelConfig, feature_names: list[str], context: int) -> dict[str, Any]:
    """What identifies a policy's architecture and inputs."""
    return {"model": dataclasses.asdict(model_cfg), "feature_names": list(feature_names), "context": context}


def save(path: Path, state: dict[str, Any]) -> None:
    """Write atomically (an interrupted save never leaves a truncated checkpoint behind) bytes that depend only on
    ``state``'s content: the same values, dtypes, shapes and key orders give the same file, however the state was
    reached (a resumed run writes the bytes of an uninterrupted one). See :func:`canonical`.

    Serialised through memory: ``torch.save`` to a path names the archive's records after the (random) temp file,
    which would make identical checkpoints differ byte for byte. The bytes are those of this torch version's format.
    """
    buffer = io.BytesIO()
    torch.save(canonical(state), buffer, pickle_protocol=PICKLE_PROTOCOL)
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(buffer.getvalue())


def canonical(obj: Any) -> Any:
    """A copy of ``obj`` whose pickle is a function of its content alone, not of its objects' identities or memory.

    Pickle writes an object met twice as a back-reference, so two equal states differ in bytes when one shares an
    object the other holds twice: a resumed run's history holds the strings its checkpoint was unpickled with beside
    the interned ones of the records added since. ``torch.save`` writes a tensor's whole storage, shared or offset.
    Here every string is interned (equal strings are one object), every container is a new one (none is shared),
    every tensor is a contiguous CPU copy with a storage of its own, and numpy scalars become Python numbers.
    Dict order is kept (a state dict's order is its meaning), as is an ``OrderedDict``'s ``_metadata``.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
    if type(obj) is str:
        return sys.intern(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        out = type(obj)() if type(obj) in (dict, OrderedDict) else {}
        for key, value in obj.items():
            out[canonical(key)] = canonical(value)
        if type(obj) is OrderedDict and hasattr(obj, "_metadata"):  # module versions, read by load_state_dict
            out._metadata = canonical(obj._metadata)  # type: ignore[attr-defined]
        return out
    if isinstance(obj, torch.Size):
        return torch.Size(obj)
    if type(obj) in (list, tuple):
        return type(obj)(canonical(v) for v in obj)
    return obj


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found; run the train stage first (dvc repro train)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # damaged bytes surface as almost any exception inside torch's unpickler
        first_line = (str(exc).splitlines() or [""])[0]  # an empty file raises EOFError with no message
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {first_line[:200]}); "
            "delete it and re-run the train stage"
        ) from None


def build_policy(
    state: dict[str, Any], path: Path, expected: dict[str, Any] | None = None
) -> PolicyNetwork | PortfolioPolicy:
    """Rebuild the policy stored in ``state`` (the network its ``model.kind`` names); refuse it if its spec differs
    from ``expected``."""
    return _build(make_policy, state, path, expected, "policy")


def load_policy(path: Path, expected: dict[str, Any] | None = None) -> PolicyNetwork | PortfolioPolicy:
    """``build_policy(load(path), path, expected)``: the policy of a checkpoint file, checked against ``expected``."""
    return build_policy(load(path), path, expected)


def load_forecaster(path: Path, expected: dict[str, Any] | None = None) -> Forecaster:
    """The MSE proxy's forecaster of a checkpoint file (written by the train-proxy stage)."""
    return _build(Forecaster, load(path), path, expected, "forecaster")


def _build(
    make: Callable[[ModelConfig, int, int], M],
    state: dict[str, Any],
    path: Path,
    expected: dict[str, Any] | None,
    what: str,
) -> M:
    spec = (state.get("spec") or {}).get("policy")
    if spec is None or "model_state" not in state:
        raise CheckpointError(f"{path}: no spec/model_state inside; it was not written by DiffQuant's trainer")
    if expected is not None and spec != expected:
        diffs = [k for k in expected if spec.get(k) != expected[k]]
        raise CheckpointError(
            f"{path}: checkpoint was trained with another configuration (differs in: {', '.join(diffs)}); "
            "re-run the train stage with the current params, or restore the params it was trained with"
        )
    model = make(build_section(ModelConfig, spec["model"], "model"), len(spec["feature_names"]), spec["context"])
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the {what} ({str(exc).splitlines()[0]})") from None
    return model
