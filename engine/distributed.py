"""torch.distributed in a few functions: the same script runs alone or under torchrun.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous for many machines); without
them everything here is a no-op and the run is a single process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Only the main process writes checkpoints, logs and results."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun; return this process's device.

    ``device`` is the chosen one (engine.setup.pick_device); under torchrun each process takes
    the GPU of its LOCAL_RANK, and the backend is nccl on GPUs, gloo on CPUs.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if device.type == "cuda" and launched:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if launched and not is_distributed():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes, in place; returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: object) -> object:
    """Rank 0's value of ``obj`` on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ShardSampler(Sampler[int]):
    """Every index exactly once over all processes (rank r takes r, r+N, ...), no padding.

    DistributedSampler pads the last round with repeats, which would count some images twice;
    evaluation must see each image once so its metrics equal a single process's.
    """

    def __init__(self, length: int) -> None:
        self.indices = range(rank(), length, world_size())

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
