"""Where a run's checkpoints and metrics go besides RUN_DIR, per launcher.

The loop talks to one `Reporter`, never to Ray directly, so the same loop runs in
local mode, under Ray Train and (later) inside Tune trials:

- `Reporter` (local mode): checkpoints live in RUN_DIR/checkpoints only.
- `RayTrainReporter`: also hands each checkpoint to `ray.train.report` (Ray keeps
  its copies under RUN_DIR/ray) and restores from `ray.train.get_checkpoint()`
  after a worker failure. Every rank calls `report` equally often (it is a barrier).
- `TuneReporter` (a Tune trial running the loop itself, one worker): hands metrics
  and checkpoints to `tune.report`, and restores from `tune.get_checkpoint()`: the
  trial's own checkpoint after a restart, or the donor's after a PBT exploit.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
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
        reported = _checkpoint_file(ray.train.get_checkpoint())
        # The newer of Ray's copy and RUN_DIR's wins: a run may have gone on in local mode.
        if reported is not None and reported[0] >= local_step:
            return reported[1], f"Ray checkpoint {reported[2]}"
        return super().load_latest(run_dir)

    def report(self, metrics: dict, checkpoint_path: Optional[str] = None) -> None:
        import ray.train

        if checkpoint_path is None:
            ray.train.report(metrics)
            return
        with _staged(checkpoint_path) as (directory, name):
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                             checkpoint_dir_name=name)


class TuneReporter(Reporter):
    """The loop inside a Tune trial (one worker): Tune keeps the checkpoints and decides restores."""

    def load_latest(self, run_dir: str) -> tuple[Optional[dict], Optional[str]]:
        from ray import tune

        reported = _checkpoint_file(tune.get_checkpoint())
        if reported is None:  # a new trial (or one Tune never saw a checkpoint of)
            return super().load_latest(run_dir)
        step, state, path = reported
        donor = state.get("config", {}).get("run", {}).get("dir", "")
        if donor and os.path.abspath(donor) != os.path.abspath(run_dir):
            return state, f"PBT exploit: checkpoint of {donor} (step {step}, {path})"
        return state, f"Tune checkpoint {path}"

    def report(self, metrics: dict, checkpoint_path: Optional[str] = None) -> None:
        from ray import tune

        if checkpoint_path is None:
            tune.report(metrics)
            return
        with _staged(checkpoint_path) as (directory, _):
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def _checkpoint_file(reported) -> Optional[tuple[int, dict, str]]:
    """(step, state, where) of the step-*.pt file inside a Ray/Tune checkpoint, or None."""
    if reported is None:
        return None
    with reported.as_directory() as directory:
        files = sorted(glob.glob(os.path.join(directory, "step-*.pt")))
        if not files:
            return None
        return int(os.path.basename(files[-1])[5:-3]), ckpt.load_checkpoint(files[-1]), reported.path


@contextlib.contextmanager
def _staged(checkpoint_path: str) -> Iterator[tuple[str, str]]:
    """A temporary directory holding only `checkpoint_path` (hard-linked when possible), and its name."""
    staging = tempfile.mkdtemp(prefix="began-ckpt-")
    try:
        staged = os.path.join(staging, os.path.basename(checkpoint_path))
        try:
            os.link(checkpoint_path, staged)  # no copy when on the same filesystem
        except OSError:
            shutil.copy2(checkpoint_path, staged)
        yield staging, os.path.basename(checkpoint_path)[:-3]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
