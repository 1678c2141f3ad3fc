"""The loop's reporter under Ray Train, and the checkpoint hand-over Ray and Tune share.

`RayTrainReporter` reports metrics to `ray.train.report`; every rank calls it equally
often (it is a barrier). A checkpoint is stored once, in RUN_DIR/checkpoints, which every
worker's node reaches (a shared filesystem or an object store: the run directory check
refuses anything else), so after a worker failure the new group restores from RUN_DIR.
Only a nested Tune trial (`with_checkpoints`) also hands its checkpoints to Ray, since
Tune's PBT and trial restore go through them; those copies live under RUN_DIR/ray.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Optional

import ray.train

from began_dist.train import state as ckpt
from began_dist.train.reporting import Reporter


class RayTrainReporter(Reporter):
    def __init__(self, with_checkpoints: bool = False):
        self.with_checkpoints = with_checkpoints

    def load_latest(self, run_dir: str) -> tuple[Optional[dict], Optional[str]]:
        found = ckpt.list_checkpoints(run_dir)
        local_step = found[-1][0] if found else -1
        reported = checkpoint_file(ray.train.get_checkpoint())
        # The newer of Ray's copy and RUN_DIR's wins: a run may have gone on in local mode.
        if reported is not None and reported[0] >= local_step:
            return reported[1], f"Ray checkpoint {reported[2]}"
        return super().load_latest(run_dir)

    def report(self, metrics: dict, checkpoint_path: Optional[str] = None) -> None:
        if checkpoint_path is None or not self.with_checkpoints:
            ray.train.report(metrics)
            return
        with staged(checkpoint_path) as (directory, name):
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                             checkpoint_dir_name=name)


def checkpoint_file(reported) -> Optional[tuple[int, dict, str]]:
    """(step, state, where) of the step-*.pt file inside a Ray/Tune checkpoint, or None."""
    if reported is None:
        return None
    with reported.as_directory() as directory:
        found = ckpt.list_checkpoints_in(directory)
        if not found:
            return None
        step, path = found[-1]
        return step, ckpt.load_checkpoint(path), reported.path


@contextlib.contextmanager
def staged(checkpoint_path: str) -> Iterator[tuple[str, str]]:
    """A temporary directory holding only `checkpoint_path` (hard-linked when possible), and its name."""
    staging = tempfile.mkdtemp(prefix="began-ckpt-")
    try:
        staged_path = os.path.join(staging, os.path.basename(checkpoint_path))
        try:
            os.link(checkpoint_path, staged_path)  # no copy when on the same filesystem
        except OSError:
            shutil.copy2(checkpoint_path, staged_path)
        yield staging, os.path.basename(checkpoint_path)[:-3]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
