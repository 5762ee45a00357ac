"""Data-parallel runs: torchrun sets ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``; every process calls the same
command, rank 0 alone writes files and logs."""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[World, torch.device, bool]:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA), or a world of one.

    Returns ``(world, device, owns_group)``; on CUDA each process takes ``cuda:LOCAL_RANK``. ``owns_group`` says
    whether this call created the group (and :func:`train` must destroy it).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 and not dist.is_initialized():
        return World(), device, False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), local_rank), device, owns


def all_reduce_sum(values: list[float], device: torch.device, world: World) -> list[float]:
    if world.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
