"""Checkpoints: state_dicts and tensors only, written atomically, loaded with weights_only=True.

`RUN_DIR/checkpoints/step-XXXXXXXX.pt` holds the keys of docs/design.md: G, D, opt_G,
opt_D, k_t, step, lr_state, rng, data, fixed_z, config (families add theirs).
A write goes to a temporary file in the same directory, is fsynced, then renamed
over the final name, so a crash leaves either the old set of checkpoints or the
new one, never a partial file under a checkpoint's name.
"""

from __future__ import annotations

import re
from typing import Optional

import torch

from began_dist import storage

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step-(\d{8,})\.pt$")


def checkpoint_path(run_dir: str, step: int) -> str:
    return storage.join(run_dir, CHECKPOINT_DIR, f"step-{step:08d}.pt")


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every complete checkpoint, oldest first."""
    return list_checkpoints_in(storage.join(run_dir, CHECKPOINT_DIR))


def list_checkpoints_in(directory: str) -> list[tuple[int, str]]:
    """(step, path) of the step-XXXXXXXX.pt files directly in `directory`, oldest first."""
    found = []
    for path in storage.glob(directory, "step-*.pt"):
        match = _NAME.search(storage.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str) -> Optional[str]:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(state: dict, run_dir: str, step: int, keep: int) -> str:
    """Write `state` atomically as step-XXXXXXXX.pt (storage.atomic_writer), then keep only the newest `keep`.

    Checkpoints of later steps than `step` are dropped first: they belong to a history the run
    went back from (a PBT exploit restores the donor's earlier step into a trial that had gone
    further), and counting them as newer would delete the checkpoint just written.
    """
    final = storage.save_torch(state, checkpoint_path(run_dir, step))
    found = list_checkpoints(run_dir)
    for _, later in (item for item in found if item[0] > step):
        storage.delete(later)
    for _, old in [item for item in found if item[0] <= step][:-keep]:
        storage.delete(old)
    return final


def load_checkpoint(path: str) -> dict:
    """Load on the CPU with weights_only=True: no arbitrary code runs from a checkpoint file."""
    return storage.load_torch(path)


def capture_rng(device: torch.device) -> dict:
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng(rng: dict, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)
