"""Files between stages: atomic writes (a crash never leaves half a file), JSON, CSV and parquet, sha256.

Every layer reads and writes through here; a missing or damaged input names the stage that makes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from diffquant.errors import DataError


def read_parquet(path: Path, produced_by: str) -> pd.DataFrame:
    """A stage's parquet input; missing or damaged -> ``DataError`` saying which stage makes it."""
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the {produced_by} stage first (dvc repro {produced_by})") from None
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DataError(
            f"{path}: not a readable parquet file ({exc}); re-run the {produced_by} stage (dvc repro -f {produced_by})"
        ) from None


def read_json(path: Path, produced_by: str) -> Any:
    """A stage's JSON input; missing or damaged -> ``DataError`` saying which stage makes it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the {produced_by} stage first (dvc repro {produced_by})") from None
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: not valid JSON ({exc}); re-run the {produced_by} stage (dvc repro -f {produced_by})"
        ) from None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def json_digest(value: Any) -> str:
    """The first 16 hex digits of the sha256 of ``value`` as sorted-key JSON: a short key for a configuration."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def verify_sha256(path: Path, expected: str) -> None:
    actual = sha256(path)
    if actual != expected:
        raise DataError(
            f"{path}: sha256 {actual} does not match the expected {expected}; the file is corrupt or was replaced. "
            "Restore it (git checkout / re-download) before running the pipeline"
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path next to ``target``; rename it over ``target`` only if the block succeeds.

    A crash or an error in the block leaves the previous ``target`` (or nothing) in place, never half a file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_parquet(df: pd.DataFrame, target: Path) -> None:
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)


def write_json(path: Path, obj: Any) -> None:
    """Indented JSON, written atomically; NaN is refused (DVC and other readers cannot parse it)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """A CSV table, written atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
