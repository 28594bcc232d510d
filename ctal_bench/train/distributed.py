"""Data-parallel training under torchrun: which process this is, the process group, DDP.

torchrun starts one process per device and tells each its place through the environment
(RANK, WORLD_SIZE, LOCAL_RANK). Without torchrun there is one process, ``SINGLE_PROCESS``,
and nothing here communicates, so the single-process path runs exactly as it always did.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ctal_bench.errors import UserError

# Rank 0 may spend hours filling the data caches (features of a large corpus) while the others
# wait. They wait in a CPU group of their own with this timeout, so that a hung collective in
# training still fails after the default one.
DATA_WAIT = timedelta(hours=24)
_data_wait_group = None  # created by process_group


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the rank on this machine: which GPU it drives

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the checkpoints and prints; the others only compute."""
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This rank's contiguous share of a global batch of ``n`` rows; shares differ by at most one."""
        return slice(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def average(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The mean over ranks of each scalar (one all-reduce for all of them)."""
        if self.size == 1 or not values:
            return values
        stacked = torch.stack(list(values.values()))
        dist.all_reduce(stacked)
        return dict(zip(values, stacked / self.size))

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (filling caches on disk); the others run it after, reading them."""
        if not self.is_main and self.size > 1:
            dist.barrier(group=_data_wait_group)
        yield
        if self.is_main and self.size > 1:
            dist.barrier(group=_data_wait_group)


SINGLE_PROCESS = World()


def from_environment() -> World:
    """The world torchrun describes in the environment, or ``SINGLE_PROCESS`` without torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return SINGLE_PROCESS
    try:
        world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                      int(os.environ.get("LOCAL_RANK", "0")))
    except (KeyError, ValueError):
        raise UserError("WORLD_SIZE is set but RANK and LOCAL_RANK are not both integers: "
                        "start data-parallel runs with torchrun") from None
    if not 0 <= world.rank < world.size:
        raise UserError(f"RANK {world.rank} is outside WORLD_SIZE {world.size}")
    return world


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[torch.device]:
    """Join the process group for the block (NCCL on GPUs, gloo on CPUs); yields this process's
    device, which on GPUs is the one numbered LOCAL_RANK."""
    if world.size == 1:
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    global _data_wait_group
    _data_wait_group = dist.new_group(backend="gloo", timeout=DATA_WAIT)
    try:
        yield device
    finally:
        dist.destroy_process_group()  # every group
        _data_wait_group = None


def data_parallel(module: nn.Module, world: World, device: torch.device,
                  find_unused_parameters: bool = False) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel (which averages gradients over ranks in
    ``backward``), or itself in a single process.

    ``find_unused_parameters`` costs a walk of the autograd graph every step; it is needed only
    when some wrapped parameters get no gradient.
    """
    if world.size == 1:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
