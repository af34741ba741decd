"""DistributedDataParallel set-up: under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK in the
environment) join the process group, NCCL on GPU and gloo on CPU; otherwise run alone."""

import os
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistInfo", "init_distributed", "wrap_model", "shutdown_distributed"]


class DistInfo(NamedTuple):
    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0


def init_distributed(device=None):
    """Join the torchrun process group if there is one. device: None (CUDA when available,
    one GPU per local rank, else CPU) or a device string. Returns DistInfo."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, device)


def wrap_model(model, info):
    """DistributedDataParallel(model) in a distributed run, else the model itself."""
    if not info.distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def shutdown_distributed():
    if dist.is_initialized():
        dist.destroy_process_group()
