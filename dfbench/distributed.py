"""Process groups for torchrun / ``accelerate launch``: the rank, the world size and the device.

Both launchers set ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; with one process nothing is set up.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ranks:
    """This process's rank, the world size and its device (``None``: the backbone's default)."""

    rank: int = 0
    world_size: int = 1
    device: str | None = None

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (the value itself with one process)."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (``[value]`` with one process)."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        """Wait for every rank (a no-op with one process)."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


@contextmanager
def process_group() -> Iterator[Ranks]:
    """Join the launcher's process group (NCCL on GPUs, else gloo) for the block; one device per local rank."""
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield Ranks()
        return
    import torch
    import torch.distributed as dist

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = None
    if torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)   # what mmengine's Runner and NCCL collectives take as this rank's GPU
    try:
        yield Ranks(rank, world_size, device)
    finally:
        dist.destroy_process_group()
