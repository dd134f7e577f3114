"""Distributed helpers that work the same with or without an initialised process group.

Every function degrades to the single-process answer when ``torch.distributed`` is not
available or not initialised, so model and data code can call them unconditionally.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_local_rank() -> int:
    """Rank within the machine; set by our launcher and by torchrun through ``LOCAL_RANK``."""
    import os

    return int(os.environ.get("LOCAL_RANK", 0)) if is_dist() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all processes; a no-op for a single process."""
    if get_world_size() > 1:
        dist.barrier()


def reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all processes (AdelaiDet's ``reduce_mean``); returns a new tensor."""
    world_size = get_world_size()
    if world_size == 1:
        return tensor.clone()
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor / world_size


def all_gather(data: Any) -> list[Any]:
    """Gathers any picklable object from every process; returns the list ordered by rank.

    Goes through pickled byte tensors on the process group's device (CPU for gloo, the
    current CUDA device for NCCL), so it works for both backends.
    """
    world_size = get_world_size()
    if world_size == 1:
        return [data]
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == dist.Backend.NCCL
        else torch.device("cpu")
    )
    payload = torch.frombuffer(bytearray(pickle.dumps(data)), dtype=torch.uint8).to(device)
    size = torch.tensor([payload.numel()], device=device, dtype=torch.int64)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    max_size = int(max(s.item() for s in sizes))
    padded = torch.zeros(max_size, dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload
    gathered = [torch.zeros_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    return [
        pickle.loads(buf[: int(n.item())].cpu().numpy().tobytes()) for buf, n in zip(gathered, sizes)
    ]
