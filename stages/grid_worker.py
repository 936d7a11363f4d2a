"""Grid worker: train the units of the grids in an SQL database, on this machine, for a coordinator elsewhere.

A stage run with ``train.grid_storage`` set (train, train-proxy, folds) enqueues its training units there and works
on them itself; start this on every other machine (``--workers N`` for N processes here) to share the grid. It
reads the units' work from ``train.grid_jobs`` and writes their checkpoints where the coordinator asked, so both
must be folders every machine sees at the same path. A worker killed mid-unit is noticed after ``--grace``
seconds by the others, and its unit is trained again from its last epoch. docs/compute.md has the recipe.
"""

from __future__ import annotations

import logging
import multiprocessing as mp

from diffquant.train.cluster import Cluster, serve
from stages._cli import load_params, parser, repo_root, run_stage

log = logging.getLogger("diffquant.stages.grid_worker")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, training=True)
    p.add_argument("--storage", default="", help="SQLAlchemy URL of the grid database (default: train.grid_storage)")
    p.add_argument("--jobs", default="", help="the shared folder of the units' work (default: train.grid_jobs)")
    p.add_argument("--heartbeat", type=int, default=10, help="seconds between a worker's signs of life")
    p.add_argument("--grace", type=int, default=60, help="seconds without one before a unit is given to another")
    p.add_argument("--linger", type=float, default=60.0, help="seconds to wait for new units once none is left")
    args = p.parse_args(argv)
    cfg = load_params(args.params, args.workers)
    cluster = Cluster(
        args.storage or cfg.train.grid_storage,
        repo_root() / (args.jobs or cfg.train.grid_jobs),
        args.heartbeat,
        args.grace,
        linger_s=args.linger,
        local_workers=cfg.train.workers,
    )
    cluster.open()  # a bad URL fails here, once, not in every process
    if cfg.train.workers == 1:
        log.info("grid worker: trained %d units", serve(cluster))
        return
    with mp.get_context("spawn").Pool(cfg.train.workers) as pool:
        done = pool.map(serve, [cluster] * cfg.train.workers)
    log.info("grid worker: %d processes trained %d units", cfg.train.workers, sum(done))


if __name__ == "__main__":
    run_stage(main)
