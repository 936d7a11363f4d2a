"""The grid joining a Ray cluster (``ray.cluster_utils.Cluster``: a head without CPUs and two one-CPU nodes, each a
raylet of its own): the driver's ``diffquant`` travels to the nodes, and a node removed while it trains a unit loses
no unit: the unit is retried on the other node, resumes from its last finished epoch, and every unit ends with the
weights of an in-process run, each epoch reported once."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

from diffquant.compute.grid import run_grid
from tests.compute.grid_units import Gated, Recorder, tiny_works

pytestmark = pytest.mark.slow  # three raylets and real (tiny) training

FAST_HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}


@pytest.fixture(scope="module")
def cluster() -> Any:
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": FAST_HEALTH_CHECKS},
    )
    for _ in range(2):
        c.add_node(num_cpus=1)
    yield c
    ray.shutdown()
    c.shutdown()


class RemoveNode(Recorder):
    """Records every call; at the victim's first epoch, removes the node it runs on (the unit waits there)."""

    def __init__(self, log: list, cluster: Cluster, victim: str, gate: Path) -> None:
        super().__init__(log, "g")
        self.cluster, self.victim, self.gate = cluster, victim, gate

    def epoch(self, seed: int, record: dict) -> None:
        super().epoch(seed, record)
        if f"seed_{seed}" != self.victim or self.gate.with_suffix(".done").exists():
            return
        deadline = time.monotonic() + 120
        while not self.gate.exists():  # the unit writes its node after reporting the epoch
            assert time.monotonic() < deadline, "the victim never said where it runs"
            time.sleep(0.05)
        node = next(n for n in self.cluster.list_all_nodes() if n.node_id == self.gate.read_text())
        self.cluster.remove_node(node, allow_graceful=False)
        self.gate.with_suffix(".done").touch()


def test_a_node_removed_mid_grid_loses_no_unit(cluster: Cluster, tmp_path: Path) -> None:
    seeds = [1, 2, 3, 4]
    reference = tiny_works(tmp_path / "reference", seeds, epochs=3)
    run_grid(reference, lambda unit: Recorder([], "ref"), reference[0].cfg.train)
    gate = tmp_path / "node"
    works = tiny_works(tmp_path / "ray", seeds, epochs=3)
    works[1] = Gated.of(works[1], gate, hold=True)  # seed 2 waits on its node after epoch 1
    train = dataclasses.replace(works[0].cfg.train, grid_address=cluster.address)  # joined: code shipped to nodes
    log: list[tuple[str, str, Any]] = []
    hooks = RemoveNode(log, cluster, "seed_2", gate)
    outcomes = run_grid(works, lambda unit: hooks, train)

    assert gate.with_suffix(".done").exists()  # the node was removed under the unit
    assert sorted(outcomes) == sorted(w.unit for w in works)
    assert outcomes[works[1].unit].result.resumed_from == 1
    for seed in seeds:  # one outcome each; every epoch once
        calls = [(kind, value) for kind, name, value in log if name == f"g/{seed}"]
        assert calls == [("started", 0), ("epoch", 1), ("epoch", 2), ("epoch", 3), ("finished", seed)], seed
    for work in works:
        for name in ("last.pt", "best.pt", "final.pt", "history.json"):
            ours, theirs = work.folder / name, tmp_path / "reference" / work.folder.name / name
            assert ours.read_bytes() == theirs.read_bytes(), (work.unit.name, name)
