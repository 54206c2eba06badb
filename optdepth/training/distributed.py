"""Data-parallel training with torch.distributed, started by ``torchrun``.

``torchrun --nproc_per_node=N -m optdepth train ...`` sets ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in every process; multi-node runs follow
torchrun's own conventions (``--nnodes``, ``--rdzv-endpoint``). :func:`setup` reads them and
joins the process group: NCCL with one GPU per process (``cuda:LOCAL_RANK``), gloo on CPU. A
plain ``optdepth train`` is a world of one and touches no process group.

The batch size of the config is *global*: each of N processes trains on ``batch_size / N``
samples per step and DistributedDataParallel averages the gradients, so a run with N processes
takes the same optimiser steps on the same global batches as a single-process run.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from optdepth.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job.

    Attributes:
        rank: global rank (0 logs and writes files).
        world_size: number of processes.
        device: the device this process trains on.
        owns_group: whether :func:`setup` created the process group (and :func:`teardown`
            should destroy it).
    """

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


#: The devices optdepth runs on.
DEVICE_PATTERN = r"cpu|cuda(:\d+)?"


def choose_device(device: str | None, local_rank: int = 0) -> torch.device:
    """``device`` as asked (None: cuda if available), with ``cuda`` meaning ``cuda:LOCAL_RANK``."""
    name = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(name, str) or not re.fullmatch(DEVICE_PATTERN, name):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available; "
                          "use --device cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} does not exist: this machine has"
                          f" {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(f"cuda:{local_rank}" if name == "cuda" else name)


def _env_int(name: str, default: int) -> int:
    """An integer environment variable that torchrun sets (``default`` when unset)."""
    value = os.environ.get(name, str(default))
    if not value.isdigit():
        raise ConfigError(f"environment variable {name}={value!r} is not a non-negative integer;"
                          " unset it, or start the job with torchrun")
    return int(value)


def setup(device: str | None = None) -> DistContext:
    """Join the process group torchrun describes (if any) and pick this process's device.

    An already initialised process group (e.g. made by a test harness) is used as it is.
    """
    world, local_rank = _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(),
                           choose_device(device, local_rank))
    dev = choose_device(device, local_rank)
    if world == 1:
        return DistContext(0, 1, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK") if v not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} asks for {world} processes, but {', '.join(missing)}"
                          " is not set: start the job with torchrun, or unset WORLD_SIZE")
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    log.info("rank %d of %d on %s (%s)", dist.get_rank(), world, dev, dist.get_backend())
    return DistContext(dist.get_rank(), world, dev, owns_group=True)


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup` made it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """The model wrapped in DistributedDataParallel when there are several processes."""
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def broadcast(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects; a no-op for one process)."""
    if not ctx.distributed:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_true(flag: bool, ctx: DistContext) -> bool:
    """Whether ``flag`` holds on every rank (so that all ranks stop together)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def check_batch_size(batch_size: int, ctx: DistContext) -> None:
    """The global batch must split evenly across processes."""
    if batch_size % ctx.world_size:
        raise ConfigError(f"the batch size is global and must be divisible by the number of "
                          f"processes: {batch_size} over {ctx.world_size}; use a multiple of "
                          f"{ctx.world_size}")


def average(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Each value averaged over the ranks (per-rank means of equal shares -> global mean)."""
    if not ctx.distributed:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return dict(zip(values, (t / ctx.world_size).tolist(), strict=True))
