"""Checkpoints: state_dicts and tensors only, written atomically, loaded with weights_only=True.

`RUN_DIR/checkpoints/step-XXXXXXXX.pt` holds the Contract's keys: G, D, opt_G,
opt_D, k_t, step, lr_state, rng, data, fixed_z, config (families add theirs).
A write goes to a temporary file in the same directory, is fsynced, then renamed
over the final name, so a crash leaves either the old set of checkpoints or the
new one, never a partial file under a checkpoint's name.
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
from typing import Optional

import torch

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step-(\d{8,})\.pt$")


def checkpoint_path(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, CHECKPOINT_DIR, f"step-{step:08d}.pt")


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every complete checkpoint, oldest first."""
    found = []
    for path in glob.glob(os.path.join(run_dir, CHECKPOINT_DIR, "step-*.pt")):
        match = _NAME.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str) -> Optional[str]:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(state: dict, run_dir: str, step: int, keep: int) -> str:
    """Write `state` atomically as step-XXXXXXXX.pt, then keep only the newest `keep`."""
    directory = os.path.join(run_dir, CHECKPOINT_DIR)
    os.makedirs(directory, exist_ok=True)
    final = checkpoint_path(run_dir, step)
    handle, tmp = tempfile.mkstemp(prefix=".step-", suffix=".pt.tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    for _, old in list_checkpoints(run_dir)[:-keep]:
        os.unlink(old)
    return final


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str) -> dict:
    """Load on the CPU with weights_only=True: no arbitrary code runs from a checkpoint file."""
    return torch.load(path, map_location="cpu", weights_only=True)


def capture_rng(device: torch.device) -> dict:
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng(rng: dict, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)
