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
    def __init__(self, with_checkpoints: bool = False, stop_flag=None):
        self.with_checkpoints = with_checkpoints
        self.stop_flag = stop_flag  # the driver's StopFlag actor (distributed/stops.py), None in a Tune trial

    def load_latest(self, run_dir: str) -> tuple[Optional[dict], Optional[str]]:
        """The newest of Ray's copy and RUN_DIR's checkpoints that verifies (a run may have gone on
        in local mode); Ray's wins a tie. Called on rank 0 only: the loop broadcasts its choice."""
        reported = ray_candidate(ray.train.get_checkpoint(), "Ray checkpoint")
        candidates = ([reported] if reported else []) + ckpt.run_dir_candidates(run_dir)
        state, label, _ = ckpt.newest_verified(candidates, ckpt.warn_stderr)
        return state, label

    def report(self, metrics: dict, checkpoint_path: Optional[str] = None) -> None:
        if checkpoint_path is None or not self.with_checkpoints:
            ray.train.report(metrics)
            return
        with staged(checkpoint_path) as (directory, name):
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                             checkpoint_dir_name=name)


    def stop_requested(self) -> bool:
        return self.stop_flag is not None and bool(ray.get(self.stop_flag.get.remote(), timeout=60))

    def preemption(self) -> Optional[tuple]:
        from began_dist.distributed.stops import preemption_notice

        return preemption_notice()


def ray_candidate(reported, what: str) -> Optional[tuple]:
    """The step-*.pt file inside a Ray/Tune checkpoint as a candidate of ckpt.newest_verified, or None.

    Ray owns its storage, so a bad copy is named but not moved (its path in the candidate is None).
    """
    if reported is None:
        return None
    with reported.as_directory() as directory:
        found = ckpt.list_checkpoints_in(directory)
    if not found:
        return None
    step, name = found[-1][0], os.path.basename(found[-1][1])

    def verify() -> tuple[Optional[dict], str]:
        with reported.as_directory() as directory:
            return ckpt.verify_checkpoint(os.path.join(directory, name))

    return step, f"{what} {reported.path}", verify, None


@contextlib.contextmanager
def staged(checkpoint_path: str) -> Iterator[tuple[str, str]]:
    """A temporary directory holding only `checkpoint_path` and its sha256 sidecar (hard-linked when
    possible), and the checkpoint's name."""
    staging = tempfile.mkdtemp(prefix="began-ckpt-")
    try:
        for source in (checkpoint_path, ckpt.sidecar_path(checkpoint_path)):
            if not os.path.exists(source):
                continue
            staged_path = os.path.join(staging, os.path.basename(source))
            try:
                os.link(source, staged_path)  # no copy when on the same filesystem
            except OSError:
                shutil.copy2(source, staged_path)
        yield staging, os.path.basename(checkpoint_path)[:-3]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
