"""Data-parallel training under ``torchrun``: process group set-up, the DDP wrapper, and small collectives.

Outside ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) every function here is a no-op, so :func:`fit` runs
the same code on one process. Backend: NCCL when training on CUDA, gloo on CPU (how the tests run two processes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    """Where this process sits: rank, world size, and its device (``None``: decide from the config)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True inside a ``torchrun`` worker with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def setup(device: str = "auto") -> DistContext:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, NCCL on CUDA); else a single process."""
    if not launched_by_torchrun():
        return DistContext()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        owns = True
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev, owns_group=owns)


def teardown(ctx: DistContext) -> None:
    """Leave the process group if :func:`setup` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, ctx: DistContext) -> nn.Module:
    """DistributedDataParallel around ``module`` in a multi-process run (parameters that need no gradient are
    skipped by DDP itself); the module unchanged otherwise."""
    if ctx.world_size == 1:
        return module
    ids = [ctx.device.index] if ctx.device is not None and ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` on one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_across(value: float) -> float:
    """The mean of a float over ranks."""
    values = all_gather_object(float(value))
    return float(sum(values) / len(values))
