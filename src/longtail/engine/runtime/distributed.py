"""torch.distributed set-up for runs launched with torchrun (NCCL on GPU, gloo on CPU)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_preference: str) -> tuple[DistributedContext, torch.device]:
    """Read torchrun's environment, start the process group and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistributedContext(rank, world_size, local_rank), device


def select_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    from longtail.engine.errors import ConfigError  # a usage error: the CLI exits 2 before any work

    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={preference} but no CUDA device is available here; use train.device=cpu "
                          f"(or auto)")
    if preference.startswith("cuda:") and int(preference.split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"train.device={preference} but this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s): cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if preference == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(preference)


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def broadcast_object(obj, context: DistributedContext):
    if not context.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def shutdown(context: DistributedContext, synchronize: bool = True) -> None:
    """Destroy the process group. ``synchronize``: leave together (a rank tearing down gloo while
    rank 0 still writes outputs aborts the peer); off when this rank alone is failing, where a
    barrier would wait for peers that never come."""
    if context.enabled and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def exit_worker(code: int) -> NoReturn:
    """End a distributed worker process without Python's interpreter finalization.

    DistributedDataParallel keeps its process group alive past ``destroy_process_group`` (a
    reference held from C++, measured: the group's Python object outlives the module and a
    ``gc.collect()``). A gloo / NCCL thread that then touches Python while the interpreter is being
    torn down aborts the process with SIGABRT ("terminate called without an active exception";
    pytorch/pytorch#179291), so a run that finished and wrote all its outputs could still exit -6
    and make torchrun kill its peers. Call this only once every output is written (ours are
    fsynced and renamed atomically): it flushes the standard streams and leaves with ``code``.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
