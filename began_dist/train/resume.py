"""What a worker decides from the run directory before it builds anything: which checkpoint it
continues from and, for `train.memory_format=auto`, which layout the run uses.

Rank 0 decides and broadcasts, so every rank of a worker group starts from the same state
(docs/design.md, "Checkpoints and resume").
"""

from __future__ import annotations

from typing import Optional

import torch
from omegaconf import DictConfig

from began_dist.distributed import comm
from began_dist.families import get_family
from began_dist.families.base import auto_memory_format
from began_dist.train import state as ckpt
from began_dist.train.reporting import Reporter


def choose_checkpoint(reporter: Reporter, run_dir: str) -> tuple[Optional[dict], Optional[str], str]:
    """Rank 0 picks the newest checkpoint that verifies, and every rank gets that state: ranks
    that each chose on their own could load different steps (e.g. RUN_DIR differs between nodes).
    (state, where from, '') or, when checkpoints exist but none verifies, (None, None, why)."""
    choice = None
    if comm.rank() == 0:
        try:
            choice = reporter.load_latest(run_dir)
        except ckpt.NoGoodCheckpoint as error:
            choice = str(error)
    choice = comm.broadcast_object(choice)
    if isinstance(choice, str):
        return None, None, choice
    return (*choice, "")


def decide_memory_format(cfg: DictConfig, resume_state: Optional[dict], device: torch.device) -> str:
    """train.memory_format, with `auto` decided once per run: the value the resumed checkpoint recorded, else
    rank 0's rule (families.base.auto_memory_format), broadcast so every rank trains in the same layout.

    The decision replaces `auto` in the config, so config.yaml and every checkpoint record it, and resumes
    and worker-group restarts reuse it (the same layout keeps a resume bitwise; docs/performance.md).
    """
    choice = cfg.train.memory_format
    if choice != "auto":
        return choice
    if not get_family(cfg.model.family).honours_memory_format:
        return "contiguous"
    recorded = (resume_state or {}).get("config", {}).get("train", {}).get("memory_format", "auto")
    decided = recorded if recorded != "auto" else auto_memory_format(device)
    return comm.broadcast_object(decided)
