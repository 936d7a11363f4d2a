"""The seed layout: paths spelled once, and a persistent output folder holds exactly the configured seeds' files."""

from __future__ import annotations

from pathlib import Path

from diffquant.train import layout


def test_seeds_no_longer_configured_and_the_one_seed_layout_are_removed(tmp_path: Path) -> None:
    for name in ("seed_1", "seed_2", "seed_3"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "last.pt").write_bytes(b"x")
    for name in ("last.pt", "best.pt", "final.pt", "history.json", "val_history.csv", "history.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    layout.prune(tmp_path, [1, 3])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.png", "notes.txt", "seed_1", "seed_3"]
    assert (tmp_path / "seed_1" / "last.pt").exists()
    layout.prune(tmp_path / "missing", [1])  # a first run has no folder yet


def test_checkpoint_paths_follow_the_seed_layout(tmp_path: Path) -> None:
    assert layout.checkpoint_path(tmp_path, 42, "best") == tmp_path / "seed_42" / "best.pt"
    assert layout.checkpoint_path(tmp_path, "43", "final") == layout.seed_dir(tmp_path, 43) / "final.pt"
