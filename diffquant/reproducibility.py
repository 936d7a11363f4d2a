"""Compare a reproduction's metrics with a reference's, to a number of decimals: what is meant to agree across CPUs.

On the machine that made them, a repro gives the same bytes (``git diff --exit-code dvc.lock``). On another CPU
model the float results of large matrix products may differ in their last bits (BLAS and oneDNN pick kernels by
CPU), so checkpoints may differ in bytes while the metrics agree to many decimals. This compares the JSON metrics
files of two runs, a folder or a git revision (the committed ``outputs/metrics``) against the working tree::

    python -m diffquant.reproducibility --reference HEAD --decimals 6

Numbers agree when they differ by at most ``10**-decimals``; everything else (keys, strings, booleans, list
lengths, which files exist) must be equal. Importing this module has no side effects.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METRICS_DIR = "outputs/metrics"


@dataclass(frozen=True)
class Difference:
    file: str
    key: str  # the path inside the file, e.g. ``seeds.42.val_mse``; "" for the file itself
    reference: Any
    current: Any

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: reference {self.reference!r} != current {self.current!r}"


def diff_values(reference: Any, current: Any, decimals: int, key: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(key, reference, current)`` for every place where the two JSON values disagree, in document order."""
    if _is_number(reference) and _is_number(current):
        if not _close(float(reference), float(current), decimals):
            yield key, reference, current
    elif isinstance(reference, dict) and isinstance(current, dict):
        for k in [*reference, *(k for k in current if k not in reference)]:
            sub = f"{key}.{k}" if key else str(k)
            if k not in current:
                yield sub, reference[k], "<missing>"
            elif k not in reference:
                yield sub, "<missing>", current[k]
            else:
                yield from diff_values(reference[k], current[k], decimals, sub)
    elif isinstance(reference, list) and isinstance(current, list):
        if len(reference) != len(current):
            yield f"{key}[len]", len(reference), len(current)
        for i, (a, b) in enumerate(zip(reference, current, strict=False)):  # a length difference is reported above
            yield from diff_values(a, b, decimals, f"{key}[{i}]")
    elif type(reference) is not type(current) or reference != current:
        yield key, reference, current


def compare(reference: dict[str, Any], current: dict[str, Any], decimals: int) -> list[Difference]:
    """Differences between two sets of parsed metrics files (file name -> JSON value)."""
    out: list[Difference] = []
    for name in sorted(reference.keys() | current.keys()):
        if name not in current:
            out.append(Difference(name, "", "<present>", "<missing>"))
        elif name not in reference:
            out.append(Difference(name, "", "<missing>", "<present>"))
        else:
            out.extend(Difference(name, *d) for d in diff_values(reference[name], current[name], decimals))
    return out


def read_dir(folder: Path) -> dict[str, Any]:
    """The ``*.json`` files of a folder, parsed."""
    return {p.name: json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))}


def read_rev(rev: str, folder: str = METRICS_DIR, repo: Path = Path(".")) -> dict[str, Any]:
    """The ``*.json`` files of ``folder`` as committed at git revision ``rev`` (read with ``git show``)."""
    listing = _git(repo, "ls-tree", "--name-only", f"{rev}:{folder}")
    names = [n for n in listing.splitlines() if n.endswith(".json")]
    return {n: json.loads(_git(repo, "show", f"{rev}:{folder}/{n}")) for n in names}


def read_source(source: str, folder: str = METRICS_DIR, repo: Path = Path(".")) -> dict[str, Any]:
    """A folder when ``source`` is one, else a git revision of ``folder``."""
    return read_dir(Path(source)) if Path(source).is_dir() else read_rev(source, folder, repo)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffquant.reproducibility", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--reference", required=True, help=f"a folder of metrics JSON files, or a git revision of {METRICS_DIR}"
    )
    p.add_argument("--current", default=METRICS_DIR, help="the reproduction's folder (default: %(default)s)")
    p.add_argument("--decimals", type=int, default=6, help="numbers agree within 10**-decimals (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        reference = read_source(args.reference)
        current = read_dir(Path(args.current))
    except (OSError, ValueError) as exc:
        print(f"reproducibility: {exc}", file=sys.stderr)
        return 2
    if not reference:
        print(f"reproducibility: no metrics files in {args.reference}", file=sys.stderr)
        return 2
    diffs = compare(reference, current, args.decimals)
    n_files = len(reference.keys() | current.keys())
    if diffs:
        print(
            f"{len(diffs)} difference(s) beyond {args.decimals} decimals in {n_files} files; the first:\n  {diffs[0]}"
        )
        for d in diffs[1:10]:
            print(f"  {d}")
        return 1
    print(f"{n_files} metrics files agree with {args.reference} to {args.decimals} decimals")
    return 0


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _close(a: float, b: float, decimals: int) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= 10.0**-decimals


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"git {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


if __name__ == "__main__":
    sys.exit(main())
