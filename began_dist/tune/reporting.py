"""The loop's reporter inside a Tune trial that runs the loop itself (one worker).

Tune keeps the checkpoints and decides restores: `tune.get_checkpoint()` is the
trial's own checkpoint after a restart, or the donor's after a PBT exploit, which
is told apart by the run directory recorded in the checkpoint's config. The sweep's
StopFlag (tune/stops.py) asks the trial to save its last completed step and stop.
"""

from __future__ import annotations

import time
from typing import Optional

import ray
from ray import tune

from began_dist import storage
from began_dist.distributed.reporting import ray_candidate, staged
from began_dist.train import state as ckpt
from began_dist.train.reporting import Reporter

# How often a trial asks the sweep's StopFlag (an actor call), at most: the loop has a stop point after
# every step of a one-worker trial, and a signal to the driver can wait this long.
STOP_POLL_S = 0.5


class TuneReporter(Reporter):
    hands_over_checkpoints = True

    def __init__(self, stop_flag=None):
        self.stop_flag = stop_flag  # the sweep's StopFlag actor, None outside a sweep driver's trials
        self.polled = 0.0

    def stop_requested(self) -> bool:
        if self.stop_flag is None or time.monotonic() - self.polled < STOP_POLL_S:
            return False
        self.polled = time.monotonic()
        return bool(ray.get(self.stop_flag.get.remote(), timeout=60))

    def load_latest(self, run_dir: str) -> tuple[Optional[dict], Optional[str]]:
        """Tune's checkpoint when it verifies (it wins even when RUN_DIR has a later step: a PBT exploit
        goes back to the donor's step), else RUN_DIR's newest that verifies."""
        reported = ray_candidate(tune.get_checkpoint(), "Tune checkpoint")
        if reported is None:  # a new trial (or one Tune never saw a checkpoint of)
            return super().load_latest(run_dir)
        try:
            state, label, step = ckpt.newest_verified([reported], ckpt.warn_stderr)
        except ckpt.NoGoodCheckpoint:  # named on stderr already; fall back to the trial's own
            return super().load_latest(run_dir)
        donor = state.get("config", {}).get("run", {}).get("dir", "")
        if donor and storage.resolve(donor) != storage.resolve(run_dir):
            return state, f"PBT exploit: checkpoint of {donor} (step {step}, {label})"
        return state, label

    def report(self, metrics: dict, checkpoint_path: Optional[str] = None) -> None:
        if checkpoint_path is None:
            tune.report(metrics)
            return
        with staged(checkpoint_path) as (directory, _):
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
