"""Collective helpers for the per-worker loop: no-ops at world size 1.

The loop asks these, never torch.distributed directly, so the same code runs in
local mode (one process, no process group) and under Ray Train (a process group
set up by TorchTrainer: gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if _initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if _initialized() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def pick_device(choice: str = "auto") -> torch.device:
    """CUDA (this worker's local GPU) when asked for or present, else the CPU."""
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible")
    device = torch.device("cuda", local_rank() % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks, in place; every rank then holds the same value."""
    if _initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor
