"""``dvc.yaml`` declares everything a stage reads, so that no edit leaves a stage "up to date" with stale outputs.

For each stage (its module comes from ``cmd: python -m stages.X``):

- Code: the transitive closure of the project modules (under ``diffquant/`` and ``stages/``) the stage module
  imports, found statically with ``ast``: every ``import`` anywhere in a module (function-level lazy imports
  included), ``from a.b import c`` where ``c`` may be a submodule, and the ``__init__.py`` of every package on the
  way (importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py``). Each file must be covered by a dep:
  the file itself or a folder that holds it. Third-party imports are not deps (``requirements.txt`` pins them).
- Paths on the command line: every path option the stage's parser defines (an ``add_argument`` with a path
  default) must be given explicitly in ``cmd``, so that what DVC tracks and what the stage reads are visibly the
  same. Options are told apart by name:

  - ``--out``, ``--metrics``: outputs; the path must be covered by the stage's ``outs`` or ``metrics``.
  - ``--run-file``: the train stage's resume state (MLflow run ids; gitignored, deliberately not a DVC out).
  - ``--params``: read through the stage's ``params:`` section, not a dep.
  - anything else: an input; the path must be covered by ``deps``: a dep that is the path, a folder holding it, or
    files inside it (a stage given a folder may declare just the files in it that it reads).

- Every dep exists in the working tree or is produced by some stage (inside its ``outs`` or ``metrics``).
- Every ``params:`` key is in its params file (DVC refuses to run a stage whose key is gone, e.g. after a section
  moved).

Not caught: imports built at run time (``importlib`` with a computed name) and files a stage finds through params
(``data.path``); the download stage declares those by hand. Pure parsing: well under a second.
"""

from __future__ import annotations

import ast
import functools
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from diffquant.config import from_dict

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("diffquant", "stages")  # project code; any other import is third party or the standard library
OUTPUT_FLAGS = frozenset({"--out", "--metrics"})
UNTRACKED_FLAGS = frozenset({"--run-file", "--params"})  # resume state; params go through ``params:``


def module_file(root: Path, name: str) -> Path | None:
    """The file that defines module ``name`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``), if it is project code."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@functools.cache
def _import_statements(path: Path, stamp: tuple[int, int]) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a file, at any depth (statements only: an import is never inside an expression).
    Cached by path and (mtime, size): each stage's closure parses the same library files."""
    found, todo = [], [ast.parse(path.read_text(), str(path))]
    while todo:
        for child in ast.iter_child_nodes(todo.pop()):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            elif isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
                todo.append(child)
    return found


def imported_modules(root: Path, name: str, path: Path) -> set[str]:
    """Project modules that ``path`` (module ``name``) imports, wherever the import statement is; a project name
    with no file (a module renamed under its importers) is kept, for ``import_closure`` to report."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    stat = path.stat()
    for node in _import_statements(path, (stat.st_mtime_ns, stat.st_size)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: ``from ..x import y`` inside package ``a.b`` is ``a.x``
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{node.module}" if node.module else anchor
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if module_file(root, f"{base}.{alias.name}"))
    return {m for m in found if m.split(".")[0] in PACKAGES}


def import_closure(root: Path, module: str) -> tuple[set[str], set[str]]:
    """Repo-relative files of ``module``, of every project module it imports transitively, and of their packages;
    and the project modules imported that have no file."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # the packages a submodule import runs
        path = module_file(root, name)
        if path is not None:
            todo.extend(imported_modules(root, name, path))
    files = {m: module_file(root, m) for m in seen}
    return {f.relative_to(root).as_posix() for f in files.values() if f}, {m for m, f in files.items() if not f}


def covers(dep: str, path: str) -> bool:
    """``dep`` is ``path`` or a folder that holds it."""
    dep, path = dep.rstrip("/"), path.rstrip("/")
    return path == dep or path.startswith(dep + "/")


def path_entries(entries: list[Any] | None) -> list[str]:
    """The paths of a ``deps``/``outs``/``metrics`` list, whose items are strings or one-key mappings."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def command(stage: dict[str, Any]) -> list[str]:
    cmd = stage.get("cmd", "")
    return shlex.split(" ".join(cmd) if isinstance(cmd, list) else cmd)


def stage_module(argv: list[str]) -> str | None:
    """``X`` of ``python -m X`` when it is project code."""
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m" and argv[i + 1].split(".")[0] in PACKAGES:
            return argv[i + 1]
    return None


def cmd_options(argv: list[str]) -> dict[str, str]:
    """``--flag value`` and ``--flag=value`` pairs of a command line."""
    options: dict[str, str] = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--") and "=" in arg:
            flag, value = arg.split("=", 1)
            options[flag] = value
        elif arg.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            options[arg] = argv[i + 1]
    return options


def path_options(path: Path) -> dict[str, str]:
    """The options of a stage's parser whose default is a path: ``{"--split": "data_source/split", ...}``."""
    options: dict[str, str] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument" and node.args):
            continue
        flag = node.args[0]
        default = next((k.value for k in node.keywords if k.arg == "default"), None)
        if (
            isinstance(flag, ast.Constant)
            and str(flag.value).startswith("--")
            and isinstance(default, ast.Constant)
            and isinstance(default.value, str)
            and ("/" in default.value or Path(default.value).suffix)
        ):
            options[flag.value] = default.value
    return options


def stage_problems(stage: dict[str, Any], root: Path, produced: list[str]) -> list[str]:
    """What ``stage`` reads without declaring it (each line says what to add), and deps that cannot exist."""
    deps = path_entries(stage.get("deps"))
    outs = path_entries(stage.get("outs")) + path_entries(stage.get("metrics"))
    argv = command(stage)
    module = stage_module(argv)
    if module is None:
        return [f"cmd is not `python -m stages.<module>`: {stage.get('cmd')!r}"]
    path = module_file(root, module)
    if path is None:
        return [f"cmd runs {module}, which has no file under {root}"]

    files, unresolved = import_closure(root, module)
    problems = [f"imports {m} (closure of {module}), which has no file: renamed?" for m in sorted(unresolved)]
    problems += [
        f"imports {f} (closure of {module}): add `- {f}` (or its folder) to deps"
        for f in sorted(files)
        if not any(covers(d, f) for d in deps)
    ]
    given = cmd_options(argv)
    for flag, default in sorted(path_options(path).items()):
        if flag in UNTRACKED_FLAGS:
            continue
        if flag not in given:
            kind = "outs/metrics" if flag in OUTPUT_FLAGS else "deps"
            problems.append(
                f"{module} reads {flag} (default {default}) not given in cmd: pass `{flag} {default}` "
                f"in cmd and list it in {kind}"
            )
    for flag, value in sorted(given.items()):
        if flag in UNTRACKED_FLAGS:
            continue
        if flag in OUTPUT_FLAGS:
            if not any(covers(o, value) for o in outs):
                problems.append(f"writes {flag} {value}: add it (or its folder) to outs or metrics")
        elif not any(covers(d, value) or covers(value, d) for d in deps):
            problems.append(f"reads {flag} {value}: add `- {value}` to deps (outputs must be named in OUTPUT_FLAGS)")
    problems += [
        f"dep {d} neither exists nor is produced by a stage"
        for d in deps
        if not (root / d).exists() and not any(covers(o, d) for o in produced)
    ]
    return problems


def dvc_problems(dvc_yaml: Path, root: Path = REPO) -> dict[str, list[str]]:
    """``{stage: [problem, ...]}`` for every stage of ``dvc_yaml`` with something undeclared; empty when complete."""
    stages = _load(dvc_yaml)["stages"]
    produced = [o for s in stages.values() for o in path_entries(s.get("outs")) + path_entries(s.get("metrics"))]
    found = {name: stage_problems(stage, root, produced) for name, stage in stages.items()}
    return {name: problems for name, problems in found.items() if problems}


def _load(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def params_problems(dvc_yaml: Path, root: Path = REPO) -> dict[str, list[str]]:
    """``{stage: [missing key, ...]}``: ``params:`` keys (``a.b`` in params.yaml, or ``{file: [keys]}``) not found."""
    files: dict[str, Any] = {}
    found: dict[str, list[str]] = {}
    for name, stage in _load(dvc_yaml)["stages"].items():
        for entry in stage.get("params") or []:
            pairs = entry.items() if isinstance(entry, dict) else [("params.yaml", [entry])]
            for file, keys in pairs:
                if file not in files:
                    files[file] = _load(root / file) if (root / file).is_file() else {}
                for key in keys or []:
                    if not _has_key(files[file], key):
                        found.setdefault(name, []).append(f"params key {key} is not in {file}")
    return found


def _has_key(tree: Any, key: str) -> bool:
    for part in key.split("."):
        if not (isinstance(tree, dict) and part in tree):
            return False
        tree = tree[part]
    return True


def report(problems: dict[str, list[str]]) -> str:
    return "dvc.yaml leaves reads undeclared:\n" + "\n".join(
        f"  {name}:\n" + "\n".join(f"    - {p}" for p in lines) for name, lines in problems.items()
    )


def test_every_stage_declares_the_code_and_files_it_reads() -> None:
    problems = dvc_problems(REPO / "dvc.yaml")
    assert not problems, report(problems)


def test_every_params_key_of_a_stage_is_in_its_params_file() -> None:
    problems = params_problems(REPO / "dvc.yaml")
    assert not problems, report(problems)


def test_the_chain_is_the_only_pipeline() -> None:
    """One chain runs every study: no second dvc.yaml anywhere in the repository."""
    assert [p.relative_to(REPO) for p in REPO.rglob("dvc.yaml") if ".dvc" not in p.parts] == [Path("dvc.yaml")]


# The checker itself: each kind of omission in an otherwise complete dvc.yaml is reported.


def _mutated(tmp_path: Path, change) -> dict[str, list[str]]:
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    change(doc["stages"])
    path = tmp_path / "dvc.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dvc_problems(path)


# sim settings the model's spec is derived from (its cadence, a learned band's floor), and ones it is not
SIM_VARIANTS = (
    {"rebalance_every": 4},
    {"rebalance_at": "funding"},
    {"rebalance_at": "funding", "funding_hours": 4},
    {"band": 0.05, "band_learned": True},
    {"commission": 0.001},
    {"vol_target": 0.5},
)


def test_every_stage_that_keeps_a_network_lists_the_sim_keys_its_model_spec_is_derived_from() -> None:
    """A checkpoint's spec holds the validated ``model`` section, which ``sim`` settings derive parts of: a stage
    that did not list them would stay "up to date" under a changed cadence and hand on a network of the old one."""
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    moving = set()
    for variant in SIM_VARIANTS:
        changed = {**base, "sim": {**base["sim"], **variant}}
        if from_dict(changed).model != from_dict(base).model:
            moving |= {f"sim.{k}" for k in variant}
    assert {"sim.rebalance_every", "sim.rebalance_at", "sim.band"} <= moving and "sim.commission" not in moving
    for name in ("train", "train-proxy"):
        listed = {p for p in stages[name]["params"] if isinstance(p, str)}
        missing = [k for k in sorted(moving) if k not in listed and "sim" not in listed]
        assert not missing, f"dvc.yaml stage {name} keeps a network but does not list {missing} in params"


def _train(stages: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in stages.values() if stage_module(command(s)) == "stages.train")


def test_a_missing_library_dep_is_reported(tmp_path: Path) -> None:
    def drop_library(stages: dict[str, Any]) -> None:
        train = _train(stages)
        train["deps"] = [d for d in path_entries(train["deps"]) if not d.startswith("diffquant")]

    problems = [p for lines in _mutated(tmp_path, drop_library).values() for p in lines]
    assert any(p.startswith("imports diffquant/") and "to deps" in p for p in problems), problems
    assert any("diffquant/__init__.py" in p for p in problems), problems  # packages count


def test_an_input_left_to_its_default_or_undeclared_is_reported(tmp_path: Path) -> None:
    def hide_split(stages: dict[str, Any]) -> None:
        train = _train(stages)
        argv = command(train)
        i = argv.index("--split")
        split = argv[i + 1]
        train["cmd"] = shlex.join(argv[:i] + argv[i + 2 :])
        train["deps"] = [d for d in path_entries(train["deps"]) if not covers(split, d)]

    problems = [p for lines in _mutated(tmp_path, hide_split).values() for p in lines]
    assert any("--split" in p and "not given in cmd" in p for p in problems), problems


def test_a_params_key_that_is_gone_is_reported(tmp_path: Path) -> None:
    doc = _load(REPO / "dvc.yaml")
    _train(doc["stages"])["params"].append("no_such_section.key")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert any("no_such_section.key" in p for p in params_problems(tmp_path / "dvc.yaml").get("train", []))


def test_a_dep_that_cannot_exist_is_reported(tmp_path: Path) -> None:
    problems = _mutated(tmp_path, lambda stages: _train(stages)["deps"].append("diffquant/no_such_module.py"))
    assert any("no_such_module" in p for lines in problems.values() for p in lines), problems


@pytest.mark.parametrize("text", ["from diffquant.data import splits", "import diffquant.data.splits as s"])
def test_closure_follows_submodule_imports_and_their_packages(tmp_path: Path, text: str) -> None:
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "__init__.py").write_text("")
    (tmp_path / "stages" / "x.py").write_text(f"def main():\n    {text}\n")  # a lazy import counts too
    data = tmp_path / "diffquant" / "data"
    data.mkdir(parents=True)
    (tmp_path / "diffquant" / "__init__.py").write_text("")
    (data / "__init__.py").write_text("")
    (data / "splits.py").write_text("from ..errors import DataError\n")
    (tmp_path / "diffquant" / "errors.py").write_text("import numpy\n")
    (tmp_path / "stages" / "y.py").write_text("import diffquant.gone\n")
    assert import_closure(tmp_path, "stages.y") == (
        {"stages/__init__.py", "stages/y.py", "diffquant/__init__.py"},
        {"diffquant.gone"},
    )
    assert import_closure(tmp_path, "stages.x")[0] == {
        "stages/__init__.py",
        "stages/x.py",
        "diffquant/__init__.py",
        "diffquant/data/__init__.py",
        "diffquant/data/splits.py",
        "diffquant/errors.py",
    }
