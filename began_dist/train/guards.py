"""How a run stops early, and the switches set before it starts: what the loop (train/loop.py) guards with.

A non-finite loss (exit 3), SIGINT/SIGTERM (130, after a checkpoint) and a run directory that refused
a write (4) each stop every rank at a point all ranks pass (docs/design.md, exit codes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import torch


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or inf (exit code 3); the last good checkpoint is kept."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; a checkpoint was saved (exit code 130)."""


class StorageFailed(RuntimeError):
    """Rank 0 could not write the run directory (disk full, file too large): every rank stops (exit code 4)."""


class NonFiniteGuard:
    """Remembers, on the device, the first step whose losses were not finite.

    The host looks only when it logs or saves, so there is no sync per step, and
    no checkpoint is ever written from a state that went through a bad step.
    """

    def __init__(self, keys: tuple[str, ...], device: torch.device):
        self.keys = keys
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.values = torch.zeros(len(keys), device=device)

    def observe(self, step: int, values: torch.Tensor) -> None:
        """`values`: this step's losses in the order of `keys`, one device vector."""
        new = ~torch.isfinite(values).all() & (self.first_step < 0)
        self.first_step = torch.where(new, step, self.first_step)
        self.values = torch.where(new, values, self.values)

    def check(self) -> None:
        step = int(self.first_step)
        if step >= 0:
            losses = ", ".join(f"{k}={v:g}" for k, v in zip(self.keys, self.values.tolist()))
            raise NonFiniteLoss(f"non-finite loss at step {step}: {losses}")


@contextlib.contextmanager
def stop_requests():
    """A flag set by SIGINT/SIGTERM (main thread only), so the loop can save and stop."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: requested.set())
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def set_deterministic() -> None:
    """train.deterministic: the switches PyTorch's reproducibility notes list for CUDA, so that a
    resume on a GPU continues bitwise as it does on the CPU (docs/design.md). warn_only: an op with
    no deterministic kernel warns (naming itself) instead of stopping the run."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS makes its handle
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
