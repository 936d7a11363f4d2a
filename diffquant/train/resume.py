"""What a checkpoint must have been trained under to be resumed, and the hashes that identify data and code.

A ``last.pt`` is resumed only when its spec equals the current one; anything else (other params, data or library
code) starts over, so a resumed run is the run the current code and params would have made from scratch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LIBRARY = Path(__file__).resolve().parents[1]  # the diffquant package


@dataclass(frozen=True)
class ResumeSpec:
    """The identity of one training run, stored in every checkpoint it writes.

    ``policy`` rebuilds the network (``checkpoint.policy_spec``: architecture, feature names, context); ``training``
    holds whatever else shapes the weights (config sections, target scale, data and code hashes). Plain JSON-like
    values only: the spec is saved with the weights and compared by equality.
    """

    policy: dict[str, Any]
    seed: int
    training: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "seed": self.seed, "training": self.training}

    def with_seed(self, seed: int) -> ResumeSpec:
        return ResumeSpec(self.policy, seed, self.training)


def content_hash(paths: list[Path]) -> str:
    """The first 16 hex digits of the sha256 of the files' bytes, in the given order."""
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def code_hash() -> str:
    """The library's source (Python and the C kernels): a checkpoint left by other code must not be resumed as if it
    were ours."""
    return content_hash(sorted([*LIBRARY.rglob("*.py"), *LIBRARY.rglob("*.c")]))
