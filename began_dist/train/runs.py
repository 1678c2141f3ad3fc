"""A run directory's trained model: the newest (or a named) checkpoint, loaded into its family.

Next to the checkpoint files (train/state.py), one layer up because it builds the family
the checkpoint's config names (docs/design.md, layers). Every command that reads a trained
run (sample, eval, interpolate, arithmetic, decompose, report) loads it here.
"""

from __future__ import annotations

from typing import Optional

import torch

from began_dist.config import from_container
from began_dist.families import get_family
from began_dist.train import state as ckpt


def load_run(run_dir: str, step: Optional[int] = None, device: str = "cpu"):
    """(config, family with the checkpoint's weights, step) of a run directory."""
    found = dict(ckpt.list_checkpoints(run_dir))
    if not found:
        raise FileNotFoundError(f"{run_dir}: no checkpoints to sample from")
    if step is not None and step not in found:
        raise FileNotFoundError(f"{run_dir}: no checkpoint at step {step} (have {sorted(found)})")
    step = max(found) if step is None else step
    state = ckpt.load_checkpoint(found[step])
    cfg = from_container(state["config"])
    family = get_family(cfg.model.family)(cfg, torch.device(device))
    family.load_state_dict(state)
    family.set_step(step)
    return cfg, family, step
