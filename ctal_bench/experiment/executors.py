"""Where cells run: in this process, in N local worker processes, or as tasks on a Ray cluster.

Every executor runs the same two units of work with the same functions: a shared pre-training
(``pretrain_unit``) and a cell (``cell_unit``). Workers write each cell's record and predictions
themselves, atomically, to the shared results directory, and hand the record back. A unit whose
worker dies comes back as ``None``: the cell stays unfinished, and rerunning the suite runs it.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import sys
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ctal_bench.config import config_hash
from ctal_bench.errors import UserError, storage_error
from ctal_bench.experiment.cell import record_failure, run_cell
from ctal_bench.experiment.plan import Cell, starts_pretrained
from ctal_bench.results import ResultsStore

# (cell, its record, or None when its worker died before writing one)
Outcome = tuple[Cell, "dict | None"]


@dataclass(frozen=True)
class Workspace:
    """What a worker needs to rebuild the data pipeline and the results store."""

    results: Path
    data_dir: Path
    data_paths: tuple[tuple[str, Path], ...] = ()  # --data NAME=PATH pairs (a tuple: hashable)

    def resolved(self) -> Workspace:
        """Absolute paths, as workers on other nodes (or in other directories) need them."""
        return Workspace(self.results.resolve(), self.data_dir.resolve(),
                         tuple((name, path.resolve()) for name, path in self.data_paths))


_pipelines: dict[Workspace, object] = {}  # one DataPipeline per worker process (it caches features)


def _pipeline(workspace: Workspace):
    from ctal_bench import catalog
    from ctal_bench.data.prepare import DataPipeline

    if workspace not in _pipelines:
        catalog.load()  # a fresh worker process has not registered the models and datasets yet
        _pipelines[workspace] = DataPipeline(workspace.data_dir, dict(workspace.data_paths), workers=1,
                                             progress=False)
    return _pipelines[workspace]


def pretrain_unit(workspace: Workspace, cfg, threads: int) -> str | None:
    """Pre-train (or find) the checkpoint ``cfg``'s cells share; the traceback if it failed."""
    import torch

    from ctal_bench.train import pretrain
    from ctal_bench.train.device import resolve_device

    torch.set_num_threads(cfg.run.threads or threads)
    try:
        pretrain.pretrained_weights(cfg, _pipeline(workspace), ResultsStore(workspace.results).checkpoints,
                                   resolve_device(cfg.run.device))
        return None
    except UserError:
        raise
    except Exception as error:
        raise_storage_error(error)
        return traceback.format_exc()


def cell_unit(workspace: Workspace, cell, threads: int, pretrain_failure: str | None = None,
              on_step: Callable[[], None] | None = None) -> dict:
    """Run one cell and write its record; a cell that raises is written as failed, with its
    traceback (as is every cell of a pre-training that failed)."""
    import torch

    store = ResultsStore(workspace.results)
    if pretrain_failure is not None:
        return record_failure(store, cell, f"its pre-training failed:\n{pretrain_failure}")
    if threads:
        torch.set_num_threads(threads)
    try:
        return run_cell(cell, _pipeline(workspace), store, store.checkpoints, on_step)
    except UserError:
        raise
    except Exception as error:  # a bug or a numerical failure in one cell: record it, the suite goes on
        raise_storage_error(error)  # but a full disk fails every cell: stop
        return record_failure(store, cell, traceback.format_exc())


def raise_storage_error(error: BaseException) -> None:
    """Stop the run (a UserError) when ``error`` is a write that failed for space or permission."""
    stop = storage_error(error)
    if stop is not None:
        raise stop from None


def pretraining_needed(cell, data, checkpoints: Path, cached: dict[str, bool]) -> str | None:
    """The key of the pre-training ``cell`` waits for, or None (no pre-training, or a readable
    checkpoint in the cache; ``cached`` remembers each key's answer)."""
    from ctal_bench.train import pretrain

    cfg = cell.config
    if not starts_pretrained(cfg) or cfg.pretrain.init:
        return None
    key = pretrain.pretrain_key(cfg, data)
    if key not in cached:
        cached[key] = pretrain.load_cached(pretrain.checkpoint_path(checkpoints, key)) is not None
    return None if cached[key] else key


def prepare(cells: Sequence, data, checkpoints: Path) -> dict:
    """Build every dataset, tokenizer and feature cache the cells read, here, once, so workers
    only read caches (and never extract the same features at the same time); return the key of
    the pre-training each cell waits for (None: none, or already cached)."""
    seen, needs, cached = set(), {}, {}
    for cell in cells:
        cfg, k = cell.config, cell.key
        what = (k.dataset, cfg.data.size, k.task, k.fold, config_hash(cfg.data), cfg.pretrain.init)
        if what not in seen:
            seen.add(what)
            data.task_data(cfg, k.task, k.fold)
        needs[k] = pretraining_needed(cell, data, checkpoints, cached)
        if needs[k] is not None and needs[k] not in seen:
            seen.add(needs[k])
            data.pretraining_items(cfg)
    return needs


def _end_with_parent(parent: int) -> None:
    """Runs first in each worker: on Linux, the kernel kills it when its driver dies, so a killed
    run leaves no worker behind still writing to the results directory."""
    if sys.platform == "linux":
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the driver died before this worker got here
        os._exit(1)


class InProcess:
    """One cell after another in this process (pre-training happens inside the first cell that
    needs it); the live view follows each training step."""

    workers = 1

    def run(self, cells: Sequence, data, workspace: Workspace, on_start=None, on_step=None) -> Iterator[Outcome]:
        _pipelines[workspace] = data
        for cell in cells:
            if on_start is not None:
                on_start(cell)
            yield cell, cell_unit(workspace, cell, cell.config.run.threads, on_step=on_step)


class LocalPool:
    """``jobs`` worker processes on this machine, each with cores/jobs threads. A cell is
    submitted once its pre-training is done; cells waiting for one let later cells go first."""

    def __init__(self, jobs: int):
        if jobs < 1:
            raise UserError(f"--jobs {jobs}: expected at least 1 worker process")
        self.jobs = self.workers = jobs
        self.threads = max(1, (os.cpu_count() or 1) // jobs)

    def run(self, cells: Sequence, data, workspace: Workspace, on_start=None, on_step=None) -> Iterator[Outcome]:
        import multiprocessing

        needs = prepare(cells, data, ResultsStore(workspace.results).checkpoints)
        pretrainings: dict[str, str | None] = {}  # key -> "running", or its failure (None = done)
        pending = list(cells)
        in_flight = {}
        pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_end_with_parent, initargs=(os.getpid(),))
        try:
            while pending or in_flight:
                while len(in_flight) < self.jobs:
                    unit = self._next(pending, needs, pretrainings)
                    if unit is None:
                        break
                    kind, what = unit
                    if kind == "pretrain":
                        future = pool.submit(pretrain_unit, workspace, what.config, self.threads)
                    else:
                        failure = pretrainings.get(needs[what.key])
                        future = pool.submit(cell_unit, workspace, what, self.threads, failure)
                    in_flight[future] = unit
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    kind, what = in_flight.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:  # a worker died: its unit, and all not yet done, stay unfinished
                        left = [(kind, what), *in_flight.values(), *(("cell", c) for c in pending)]
                        yield from ((c, None) for k, c in left if k == "cell")
                        return
                    if kind == "pretrain":
                        pretrainings[needs[what.key]] = result
                    else:
                        yield what, result
        except BaseException:  # Ctrl-C, or an error here: stop the workers now, not after their units
            for process in list(pool._processes.values()):  # (no public API for this before 3.14)
                process.kill()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _next(pending: list, needs: dict, pretrainings: dict):
        """The first pending cell that can start, or the pre-training the first blocked one needs."""
        for i, cell in enumerate(pending):
            key = needs[cell.key]
            if key is None or (key in pretrainings and pretrainings[key] != "running"):
                return "cell", pending.pop(i)
            if key not in pretrainings:
                pretrainings[key] = "running"
                return "pretrain", cell
        return None


class RayCluster:
    """Each cell a Ray task with ``cpus_per_cell`` CPUs (and a GPU where the cluster has them);
    each shared pre-training a task whose result the dependent cells take as an argument, so Ray
    starts them only after it. Results and data directories must be visible to every node."""

    def __init__(self, address: str | None, cpus_per_cell: int = 1):
        if importlib.util.find_spec("ray") is None:
            raise UserError("--executor ray needs Ray: pip install -e '.[ray]'")
        if cpus_per_cell < 1:
            raise UserError(f"--cpus-per-cell {cpus_per_cell}: expected at least 1")
        self.address, self.cpus = address, cpus_per_cell
        self.workers = 1  # known once connected

    def run(self, cells: Sequence, data, workspace: Workspace, on_start=None, on_step=None) -> Iterator[Outcome]:
        import ray

        needs = prepare(cells, data, ResultsStore(workspace.results).checkpoints)
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False, include_dashboard=False)
        resources = ray.cluster_resources()
        gpus = 1 if resources.get("GPU", 0) >= 1 else 0
        self.workers = max(1, int(resources.get("GPU", 0) if gpus else resources.get("CPU", 1) // self.cpus))
        workspace = workspace.resolved()
        run_pretraining = ray.remote(pretrain_unit).options(num_cpus=self.cpus, num_gpus=gpus, max_retries=0)
        run_cell = ray.remote(cell_unit).options(num_cpus=self.cpus, num_gpus=gpus, max_retries=0)
        pretrainings, refs = {}, {}
        for cell in cells:
            key = needs[cell.key]
            if key is not None and key not in pretrainings:
                pretrainings[key] = run_pretraining.remote(workspace, cell.config, self.cpus)
            dependency = pretrainings[key] if key is not None else None
            refs[run_cell.remote(workspace, cell, self.cpus, dependency)] = cell
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            cell = refs.pop(ready[0])
            try:
                yield cell, ray.get(ready[0])
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                    ray.exceptions.TaskUnschedulableError, ray.exceptions.OutOfMemoryError):
                yield cell, None
            except ray.exceptions.RayTaskError as error:  # a UserError inside the worker
                if isinstance(error.cause, UserError):
                    raise error.cause from None
                raise
