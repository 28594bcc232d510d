"""Arguments more than one command reads: --data paths and the executor options."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ctal_bench.errors import UserError
from ctal_bench.experiment.executors import InProcess, LocalPool, RayCluster
from ctal_bench.registry import DATASETS


def parse_data_paths(specs: Sequence[str]) -> dict[str, Path]:
    paths = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not path:
            raise UserError(f"--data {spec!r}: expected NAME=PATH, e.g. iemocap=/data/IEMOCAP_full_release")
        DATASETS.get(name)  # unknown name -> "did you mean"
        if not Path(path).is_dir():
            raise UserError(f"--data {name}={path}: directory does not exist")
        paths[name] = Path(path)
    return paths


# Below this many cells a pool's single-threaded workers lose more to the shared pre-training
# (which one worker runs on one thread while the others wait) than they gain. Smoke's 3 cells
# all wait for one pre-training: 15 s on 2 threads, about 24 s on one (mini CTAL, 2 cores).
POOL_MIN_CELLS = 8


def executor_from_args(args):
    """``--executor local [--jobs N|auto]`` or ``--executor ray [--address A] [--cpus-per-cell C]``,
    checked now; returns the executor for a given number of cells to train.

    ``--jobs auto`` (the default): one single-threaded worker per core for a CPU run of at least
    POOL_MIN_CELLS cells (small models use a second thread poorly); in this process on a GPU."""
    if args.executor == "ray":
        ray = RayCluster(args.address, args.cpus_per_cell)
        return lambda cells_to_run: ray
    if args.address:
        raise UserError("--address is for --executor ray")
    if args.jobs != "auto":
        try:
            jobs = int(args.jobs)
        except ValueError:
            raise UserError(f"--jobs {args.jobs}: expected a number of worker processes or auto") from None
        pool = InProcess() if jobs == 1 else LocalPool(jobs)
        return lambda cells_to_run: pool

    def auto(cells_to_run: int):
        import torch

        on_gpu = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
        cores = os.cpu_count() or 1
        return LocalPool(cores) if cores > 1 and not on_gpu and cells_to_run >= POOL_MIN_CELLS else InProcess()
    return auto
