"""Several processes (torchrun): which one this is, and the collectives training needs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..errors import UserError

# ===================================================================== distributed

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): join the process group, nccl on GPUs and gloo on CPUs."""
    from .device import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), resolve_device(device_name)
    import torch.distributed as dist

    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"--device {device_name}: multi-process training runs on CUDA GPUs or on CPUs (gloo)")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def barrier(d: Dist) -> None:
    if d.on:
        import torch.distributed as dist
        dist.barrier()


def broadcast(d: Dist, obj):
    if not d.on:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(d: Dist, obj) -> list:
    """Every rank's `obj`, in rank order (RNG states for the checkpoint)."""
    if not d.on:
        return [obj]
    import torch.distributed as dist
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


