"""The cross-machine check: metrics JSON files agree to N decimals, or the first difference is named (file, key)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from diffquant import reproducibility as repro

METRICS = {
    "train.json": {"seeds": {"42": {"best_val_sharpe": 1.2345678, "best_epoch": 4}}, "epochs": 6},
    "proxy.json": {"trained": True, "seeds": {"42": {"val_mse": 0.57289749, "val_ic": [0.01, 0.02]}}},
}


def write(folder: Path, metrics: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in metrics.items():
        (folder / name).write_text(json.dumps(value, indent=2))
    return folder


def changed(path: list, value) -> dict:
    out = json.loads(json.dumps(METRICS))
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return out


def test_equal_within_the_decimals_passes(tmp_path, capsys):
    ref = write(tmp_path / "ref", METRICS)
    cur = write(tmp_path / "cur", changed(["proxy.json", "seeds", "42", "val_mse"], 0.57289749 + 4e-7))
    assert repro.compare(repro.read_dir(ref), repro.read_dir(cur), decimals=6) == []
    assert repro.main(["--reference", str(ref), "--current", str(cur), "--decimals", "6"]) == 0
    assert "2 metrics files agree" in capsys.readouterr().out


def test_a_difference_beyond_the_decimals_fails_naming_file_and_key(tmp_path, capsys):
    ref = write(tmp_path / "ref", METRICS)
    cur = write(tmp_path / "cur", changed(["train.json", "seeds", "42", "best_val_sharpe"], 1.2345778))
    (d,) = repro.compare(repro.read_dir(ref), repro.read_dir(cur), decimals=6)
    assert (d.file, d.key, d.reference, d.current) == ("train.json", "seeds.42.best_val_sharpe", 1.2345678, 1.2345778)
    assert repro.compare(repro.read_dir(ref), repro.read_dir(cur), decimals=4) == []  # agrees to 4 decimals
    assert repro.main(["--reference", str(ref), "--current", str(cur), "--decimals", "6"]) == 1
    assert "train.json: seeds.42.best_val_sharpe: reference 1.2345678 != current 1.2345778" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (["train.json", "seeds", "42", "best_epoch"], 5, "seeds.42.best_epoch"),  # integers: within tolerance only
        (["proxy.json", "trained"], False, "trained"),
        (["proxy.json", "seeds", "42", "val_ic"], [0.01], "seeds.42.val_ic[len]"),
        (["proxy.json", "seeds", "42", "val_ic"], [0.01, 0.03], "seeds.42.val_ic[1]"),
        (["proxy.json", "seeds", "42", "extra"], 1.0, "seeds.42.extra"),
        (["proxy.json", "seeds", "42", "val_mse"], "0.57289749", "seeds.42.val_mse"),  # a string is not a number
    ],
)
def test_other_differences_are_named(tmp_path, path, value, key):
    ref = write(tmp_path / "ref", METRICS)
    cur = write(tmp_path / "cur", changed(path, value))
    diffs = repro.compare(repro.read_dir(ref), repro.read_dir(cur), decimals=3)
    assert [(d.file, d.key) for d in diffs] == [(path[0], key)]


def test_a_missing_file_is_a_difference(tmp_path):
    ref = write(tmp_path / "ref", METRICS)
    cur = write(tmp_path / "cur", {"train.json": METRICS["train.json"]})
    (d,) = repro.compare(repro.read_dir(ref), repro.read_dir(cur), decimals=6)
    assert (d.file, d.key, d.current) == ("proxy.json", "", "<missing>")


def test_reference_from_a_git_revision(tmp_path, capsys):
    repo = tmp_path / "repo"
    write(repo / "outputs" / "metrics", METRICS)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@x"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "metrics"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True, capture_output=True)
    assert repro.read_rev("HEAD", repo=repo) == METRICS
    write(repo / "outputs" / "metrics", changed(["proxy.json", "seeds", "42", "val_mse"], 0.6))
    got = repro.compare(repro.read_rev("HEAD", repo=repo), repro.read_dir(repo / "outputs" / "metrics"), 6)
    assert [(d.file, d.key) for d in got] == [("proxy.json", "seeds.42.val_mse")]
    assert repro.main(["--reference", "no-such-rev-or-dir", "--current", str(repo / "outputs" / "metrics")]) == 2
    assert "no-such-rev-or-dir" in capsys.readouterr().err
