"""Write a study's best values back into params.yaml by editing their lines, so every comment survives."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from diffquant.config import flatten, from_dict
from diffquant.errors import ConfigError
from diffquant.io import atomic_path

_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]\w*):(?P<gap> *)(?P<value>[^#\s][^#]*?)?(?P<rest> *#.*)?$")


def _yaml_number(value: float) -> str:
    """``repr`` round-trips; PyYAML reads ``1e-05`` as a string, so the mantissa gets a ``.0``; ints stay ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    text = repr(float(value))
    return re.sub(r"^(-?\d+)e", r"\1.0e", text)


def write_params(path: Path, values: dict[str, float | int]) -> None:
    """Set dotted keys in a params.yaml by editing their lines: every comment and every other line stays as it is.

    Raises ``ConfigError`` naming a key that has no line of its own in the file (nothing is written then).
    """
    path = Path(path)
    lines = path.read_text().splitlines(keepends=True)
    stack: list[tuple[int, str]] = []
    done: set[str] = set()
    for i, line in enumerate(lines):
        m = _KEY_LINE.match(line.rstrip("\n"))
        if m is None:
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([k for _, k in stack] + [m["key"]])
        stack.append((indent, m["key"]))
        if key in values and m["value"]:
            old, new = m["value"], _yaml_number(values[key])
            rest = m["rest"] or ""
            if rest:  # keep the comment's column when the new value fits
                rest = " " * max(1, len(old) + len(rest) - len(rest.lstrip()) - len(new)) + rest.lstrip()
            lines[i] = f"{m['indent']}{m['key']}:{m['gap']}{new}{rest}\n"
            done.add(key)
    missing = sorted(set(values) - done)
    if missing:
        raise ConfigError(f"{path}: no line for {', '.join(missing)}; add the key(s) with a value, then write again")
    text = "".join(lines)
    raw = yaml.safe_load(text)
    if any(flatten(raw).get(k) != float(v) for k, v in values.items()):
        raise ConfigError(f"{path}: editing the lines did not give the values {values}; edit the file by hand")
    from_dict(raw)  # still a valid params file
    with atomic_path(path) as tmp:
        tmp.write_text(text)
