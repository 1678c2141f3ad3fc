"""Where a run's checkpoints and metrics go besides RUN_DIR, per launcher.

The loop talks to one `Reporter`, never to Ray directly, so the same loop runs in
local mode, under Ray Train and (later) inside Tune trials:

- `Reporter` (local mode): checkpoints live in RUN_DIR/checkpoints only.
- `RayTrainReporter`: also hands each checkpoint to `ray.train.report` (Ray keeps
  its copies under RUN_DIR/ray) and restores from `ray.train.get_checkpoint()`
  after a worker failure. Every rank calls `report` equally often (it is a barrier).
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from typing import Optional

from began_dist.train import state as ckpt


class Reporter:
    def load_latest(self, run_dir: str) -> tuple[Optional[dict], Optional[str]]:
        """(state, where it came from) of the newest checkpoint, or (None, None)."""
        path = ckpt.latest_checkpoint(run_dir)
        return (ckpt.load_checkpoint(path), path) if path else (None, None)

    def report(self, metrics: dict, checkpoint_path: Optional[str] = None) -> None:
        """Called by every rank at each log step and checkpoint; rank 0 passes the checkpoint."""


class RayTrainReporter(Reporter):
    def load_latest(self, run_dir: str) -> tuple[Optional[dict], Optional[str]]:
        import ray.train

        found = ckpt.list_checkpoints(run_dir)
        local_step = found[-1][0] if found else -1
        reported = ray.train.get_checkpoint()
        if reported is not None:
            with reported.as_directory() as directory:
                files = sorted(glob.glob(os.path.join(directory, "step-*.pt")))
                # The newer of Ray's copy and RUN_DIR's wins: a run may have gone on in local mode.
                if files and int(os.path.basename(files[-1])[5:-3]) >= local_step:
                    return ckpt.load_checkpoint(files[-1]), f"Ray checkpoint {reported.path}"
        return super().load_latest(run_dir)

    def report(self, metrics: dict, checkpoint_path: Optional[str] = None) -> None:
        import ray.train

        if checkpoint_path is None:
            ray.train.report(metrics)
            return
        staging = tempfile.mkdtemp(prefix="began-ckpt-")
        try:
            staged = os.path.join(staging, os.path.basename(checkpoint_path))
            try:
                os.link(checkpoint_path, staged)  # no copy when on the same filesystem
            except OSError:
                shutil.copy2(checkpoint_path, staged)
            name = os.path.basename(checkpoint_path)[:-3]
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(staging),
                             checkpoint_dir_name=name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
