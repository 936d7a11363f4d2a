"""The layers of the house (DESIGN.md section 10), read off the source: who may import what."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CODE = ("diffquant", "stages", "benchmarks")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def importers_of(package: str) -> set[str]:
    """Files of the project's code that import ``package`` or one of its submodules."""
    return {
        str(path.relative_to(REPO))
        for folder in CODE
        for path in (REPO / folder).rglob("*.py")
        if any(m == package or m.startswith(package + ".") for m in imported_modules(path))
    }


def test_only_the_tracking_package_imports_mlflow() -> None:
    outside = {f for f in importers_of("mlflow") if not f.startswith("diffquant/tracking/")}
    assert not outside, f"mlflow imported outside diffquant/tracking/: {sorted(outside)}"


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def load():\n    import mlflow.pyfunc\n    from mlflow import MlflowClient\n")
    assert {"mlflow.pyfunc", "mlflow"} <= imported_modules(module)


def test_the_training_path_never_imports_tracking() -> None:
    training = {f for f in importers_of("diffquant.tracking") if f.startswith(("diffquant/train/", "diffquant/model/"))}
    assert not training, f"the training path imports tracking: {sorted(training)}"
