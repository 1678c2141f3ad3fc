"""Collective helpers for the per-worker loop: no-ops at world size 1.

The loop asks these, never torch.distributed directly, so the same code runs in
local mode (one process, no process group) and under Ray Train (a process group
set up by TorchTrainer: gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import hashlib
import inspect
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


def all_reduce_sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks that autograd sees through (its backward sums the gradients too); identity at world size 1.

    For batch statistics in a loss: computed from all-reduced sums, they are the global batch's on every rank,
    and under DDP's gradient averaging each weight gets exactly the one-worker gradient.
    """
    if not (_initialized() and dist.get_world_size() > 1):
        return tensor
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor)


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`module` in its own DistributedDataParallel when there are several ranks, else itself.

    Buffers are not broadcast: the only buffer (the residual carry) follows the step on every rank.
    """
    if not (_initialized() and dist.get_world_size() > 1):
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel
    no_buffer_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else {"broadcast_buffers": False}
    )
    return ddp(module, device_ids=device_ids, **no_buffer_sync)


def replica_digests(tensors: list[torch.Tensor]) -> list[str]:
    """A SHA-256 of `tensors` from every rank (rank order): equal digests = bit-identical replicas."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return gather_objects(digest.hexdigest())


def gather_objects(value) -> list:
    """`value` from every rank, in rank order (a one-item list at world size 1)."""
    if not (_initialized() and dist.get_world_size() > 1):
        return [value]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value):
    """Rank 0's `value` on every rank (`value` itself at world size 1): one decision for all ranks."""
    if not (_initialized() and dist.get_world_size() > 1):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
