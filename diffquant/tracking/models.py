"""A policy bundle as an MLflow model (``pyfunc``): raw bars in, positions out, the feature pipeline inside.

Input: a table of the latest bars, oldest first: ``open_time`` (Unix ms), open, high, low, close, volume (optional
num_trades, funding_rate), at least ``min_bars`` rows. Parameter ``positions``: each member's executed position
before the first decision (empty = flat), so a caller continues a book through the hysteresis. Output: one row per
decision (``PolicyBundle.decide``), the last row being the decision at the latest close.

A portfolio model (``BookBundle``) takes the same bars of every asset in one table with a ``symbol`` column and
returns the book's weight per asset at every slot (``weight_<SYMBOL>``, ``raw_<SYMBOL>``); it decides from a flat
book, so it has no ``positions`` parameter.

Imports mlflow at module level: only the publishing stages (evaluate, study), serving and the paper trader import
this module; the training path never does.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import infer_signature
from mlflow.types.schema import ParamSchema, ParamSpec

from diffquant.data.contracts import to_ms
from diffquant.deploy.book_bundle import MANIFEST as BOOK_MANIFEST
from diffquant.deploy.book_bundle import BookBundle
from diffquant.deploy.bundle import PolicyBundle
from diffquant.errors import DataError
from diffquant.tracking.runs import tracking_uri

PACKAGE = Path(__file__).resolve().parents[1]  # diffquant/: shipped inside every model (``code_paths``)
REQUIREMENTS = PACKAGE.parent / "requirements.txt"
ENTRY = Path(__file__).with_name("model_entry.py")  # models from code: MLflow imports it to get the model
MODEL_PACKAGES = ("torch", "numpy", "pandas", "pyarrow", "pyyaml", "mlflow")  # what the bundle imports


class PolicyModel(mlflow.pyfunc.PythonModel):
    """``mlflow.pyfunc`` wrapper of a bundle stored in the model's artifacts: one asset's :class:`PolicyBundle`, or
    a portfolio's :class:`BookBundle` (its folder holds ``book.json``)."""

    def load_context(self, context: Any) -> None:
        folder = Path(context.artifacts["bundle"])
        self.bundle = BookBundle.load(folder) if (folder / BOOK_MANIFEST).is_file() else PolicyBundle.load(folder)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return model_output(self.bundle, model_input, list((params or {}).get("positions") or []) or None)


def model_output(
    bundle: PolicyBundle | BookBundle, bars: pd.DataFrame, positions: list[float] | None = None
) -> pd.DataFrame:
    """``bundle.decide`` with ``open_time`` in Unix ms, as the model's output schema has it (a portfolio decides
    from a flat book: it takes no ``positions``)."""
    if isinstance(bundle, BookBundle):
        if positions:
            raise DataError("a portfolio model decides from a flat book; it takes no 'positions' parameter")
        return bundle.decide(bars)
    out = bundle.decide(bars, positions)
    out["open_time"] = to_ms(out["open_time"])
    return out


def pip_requirements() -> list[str]:
    """The project's own pins (requirements.txt) of the packages a loaded model imports."""
    wanted = []
    for line in REQUIREMENTS.read_text().splitlines():
        spec = line.split("#")[0].strip()
        name = re.split(r"[<>=!~ ]", spec, maxsplit=1)[0].lower()
        if name in MODEL_PACKAGES:
            wanted.append(spec)
    return wanted


def log_policy_model(
    bundle: PolicyBundle | BookBundle, checkpoints: dict[str, Path], name: str, example: pd.DataFrame
) -> Any:
    """Log ``bundle`` as a pyfunc model of the active run; ``example``: model-input bars (``min_bars`` rows or more
    of each asset)."""
    signature = infer_signature(example, model_output(bundle, example))
    if isinstance(bundle, PolicyBundle):  # a single asset's book continues from given positions
        signature.params = ParamSchema([ParamSpec("positions", "double", [], shape=(-1,))])
    with tempfile.TemporaryDirectory() as tmp:
        folder = bundle.save(Path(tmp) / "bundle", checkpoints)
        code = shutil.copytree(PACKAGE, Path(tmp) / "code" / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__"))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(ENTRY),
            artifacts={"bundle": str(folder)},
            code_paths=[str(code)],
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
        )


def load_bundle(model: str, root: Path) -> PolicyBundle | BookBundle:
    """The bundle behind an MLflow model URI (``models:/...`` or ``runs:/...``) of the project's store."""
    mlflow.set_tracking_uri(tracking_uri(root))
    try:
        loaded = mlflow.pyfunc.load_model(model)
    except Exception as exc:  # MLflow raises its own exception types for every kind of bad URI
        raise DataError(f"model {model}: cannot load it ({exc}); give a models:/ or runs:/ URI or a .pt file") from None
    return loaded.unwrap_python_model().bundle
