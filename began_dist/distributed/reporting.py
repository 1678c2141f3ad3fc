"""The loop's reporter under Ray Train, and the checkpoint hand-over Ray and Tune share.

`RayTrainReporter` reports metrics to `ray.train.report`; every rank calls it equally
often (it is a barrier). A checkpoint is stored once, in RUN_DIR/checkpoints, which every
worker's node reaches (a shared filesystem or an object store: the run directory check
refuses anything else), so after a worker failure the new group restores from RUN_DIR.
Only a Tune trial (`with_checkpoints`, tune/reporting.py) also hands its checkpoints to
Ray, since Tune's PBT and trial restore go through them. Ray copies what it is handed into
its storage, so it is handed a hard link of the file (locally: the same bytes on disk), or,
when RUN_DIR is on an object store, a reference: a `step-XXXXXXXX.pt.uri` file naming the
checkpoint's URI, which `ray_candidate` follows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Optional

import ray.train

from began_dist import storage
from began_dist.train import state as ckpt
from began_dist.train.reporting import Reporter

REFERENCE = ".uri"  # step-XXXXXXXX.pt.uri: Ray's checkpoint of a file on an object store (its URI)


class RayTrainReporter(Reporter):
    def __init__(self, with_checkpoints: bool = False, stop_flag=None, notes: Sequence[str] = ()):
        self.with_checkpoints = self.hands_over_checkpoints = with_checkpoints
        self.stop_flag = stop_flag  # the driver's StopFlag actor (distributed/stops.py), None in a Tune trial
        self.notes = tuple(notes)

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
        references = [storage.read_text(path).strip() for path in storage.glob(directory, "step-*.pt" + REFERENCE)]
    if references:  # an object-store checkpoint, stored once: verified where it is
        return _reference_candidate(references[-1], f"{what} {reported.path}")
    if not found:
        return None
    step, name = found[-1][0], os.path.basename(found[-1][1])

    def verify() -> tuple[Optional[dict], str]:
        with reported.as_directory() as directory:
            return ckpt.verify_checkpoint(os.path.join(directory, name))

    return step, f"{what} {reported.path}", verify, None


def _reference_candidate(uri: str, label: str) -> Optional[tuple]:
    """The candidate of a `.pt.uri` reference: the checkpoint at `uri`, checked against its sidecar there
    (a reference whose file was deleted meanwhile does not verify: the caller falls back)."""
    match = ckpt.step_of(uri)
    if match is None:
        return None
    return match, f"{label} -> {storage.display(uri)}", (lambda: ckpt.verify_checkpoint(uri)), None


@contextlib.contextmanager
def staged(checkpoint_path: str) -> Iterator[tuple[str, str]]:
    """A temporary directory holding only `checkpoint_path` and its sha256 sidecar (hard-linked when
    possible), or, for a checkpoint on an object store, a reference to it; and the checkpoint's name."""
    staging = tempfile.mkdtemp(prefix="began-ckpt-")
    try:
        if not storage.is_local(checkpoint_path):
            name = storage.basename(checkpoint_path)
            with open(os.path.join(staging, name + REFERENCE), "w") as handle:
                handle.write(checkpoint_path + "\n")
            yield staging, name[:-3]
            return
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
