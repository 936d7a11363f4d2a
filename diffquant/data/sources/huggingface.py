"""Upstream's 1-minute dataset on the Hugging Face Hub (``ResearchRL/diffquant-data``), through the Hub cache.

The npz holds ``bars`` (N, 6) float32 open, high, low, close, volume, num_trades and ``timestamps`` (N,) int64 Unix
ms. Whether a stamp is the minute's open or its close is declared in ``data.huggingface.stamp``: the dataset card
says "close-time" but prints 00:00 -> 23:59, so it is never guessed. The dataset has no funding rates.

Offline: set ``HF_HUB_OFFLINE=1`` and pre-populate the cache; ``hf_hub_download`` then returns the cached file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from diffquant.config import HuggingFaceConfig
from diffquant.data.contracts import validate_bars
from diffquant.data.sources._common import RawData, apply_stamp, check_resolution, empty_funding, make_meta
from diffquant.errors import DataError
from diffquant.io import sha256, verify_sha256

MINUTES = 1
NPZ_COLUMNS = ("open", "high", "low", "close", "volume", "num_trades")


def load_huggingface(cfg: HuggingFaceConfig, symbol: str, root: Path) -> RawData:
    """Fetch (or find in the cache) ``cfg.filename`` and convert it; a relative ``cfg.cache_dir`` starts at ``root``."""
    path = _download(cfg, root)
    if cfg.sha256:
        verify_sha256(path, cfg.sha256)  # before a single byte of it is parsed
    where = str(path)
    stamps, values = _read_npz(path)
    frame = pd.DataFrame({"open_time": stamps, **{c: values[:, i] for i, c in enumerate(NPZ_COLUMNS)}})
    bars = apply_stamp(validate_bars(frame, where), cfg.stamp, MINUTES, where)
    check_resolution(bars, MINUTES, where, "the 1-minute Hub dataset")
    inputs = {f"hf://datasets/{cfg.repo_id}@{_commit(path, cfg.revision)}/{cfg.filename}": sha256(path)}
    return RawData(bars, empty_funding(), make_meta("huggingface", symbol, MINUTES, inputs, funding=False))


def _download(cfg: HuggingFaceConfig, root: Path) -> Path:
    # Imported here: the Hub client is heavy and only this source needs it.
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    cache_dir = None if cfg.cache_dir is None else str(root / Path(cfg.cache_dir).expanduser())
    try:
        return Path(
            hf_hub_download(
                repo_id=cfg.repo_id,
                filename=cfg.filename,
                repo_type="dataset",
                revision=cfg.revision,
                cache_dir=cache_dir,
            )
        )
    except (OSError, EntryNotFoundError, HFValidationError) as exc:
        # OSError covers the Hub's HTTP errors, no network, and "offline and not in the cache".
        raise DataError(
            f"Hugging Face dataset {cfg.repo_id}, file {cfg.filename}, revision {cfg.revision}: cannot get it "
            f"({type(exc).__name__}: {exc}). Without network, pre-populate the Hub cache on a connected machine "
            f"(`hf download {cfg.repo_id} {cfg.filename} --repo-type dataset`), copy it here and set "
            "data.huggingface.cache_dir (and HF_HUB_OFFLINE=1); or use data.source: bundled"
        ) from None


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (timestamps, bars) after checking keys and shapes; object arrays are refused (no pickle)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("bars", "timestamps") if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path}: missing key(s) {missing} (found {npz.files}); expected bars (N, 6) and timestamps (N,)"
                )
            values, stamps = npz["bars"], npz["timestamps"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path}: not a readable npz ({exc}); delete it from the Hub cache and download again"
        ) from None
    if values.ndim != 2 or values.shape[1] != len(NPZ_COLUMNS):
        raise DataError(f"{path}: key bars has shape {values.shape}, expected (N, 6): {', '.join(NPZ_COLUMNS)}")
    if stamps.shape != (len(values),) or not np.issubdtype(stamps.dtype, np.integer):
        raise DataError(
            f"{path}: key timestamps has shape {stamps.shape} and dtype {stamps.dtype}, "
            f"expected ({len(values)},) integer Unix ms"
        )
    return stamps.astype(np.int64), values.astype(np.float64)


def _commit(path: Path, revision: str) -> str:
    """The commit the Hub cache resolved ``revision`` to (``.../snapshots/<commit>/<file>``), for meta."""
    parts = path.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else revision
