"""The reporter seam: where a run's checkpoints and metrics go besides RUN_DIR.

The loop talks to one `Reporter`, never to Ray directly, so the same loop runs in
every mode. `train/` holds only the protocol and the local reporter; the ones that
talk to Ray live beside their launchers (docs/design.md: train/ imports no ray):

- `Reporter` (local mode): checkpoints live in RUN_DIR/checkpoints only.
- `began_dist.distributed.reporting.RayTrainReporter`: Ray Train's report/restore.
- `began_dist.tune.reporting.TuneReporter`: a Tune trial's report/restore, with
  PBT-donor detection.
"""

from __future__ import annotations

from typing import Optional

from began_dist.train import state as ckpt


class Reporter:
    # True when `report` hands the checkpoint file itself to Ray or Tune (a hard link, or a reference to
    # it on an object store): the loop then finishes its background upload first, so the file exists.
    hands_over_checkpoints = False
    notes: tuple[str, ...] = ()  # lines for log.txt when the run (re)starts, e.g. a worker group restart

    def load_latest(self, run_dir: str) -> tuple[Optional[dict], Optional[str]]:
        """(state, where it came from) of the newest checkpoint that verifies, or (None, None).

        Bad ones are named on stderr and moved to checkpoints/bad/; when there are checkpoints
        but none verifies, ckpt.NoGoodCheckpoint names them (train/state.py).
        """
        state, label, _ = ckpt.newest_verified(ckpt.run_dir_candidates(run_dir), ckpt.warn_stderr)
        return state, label

    def report(self, metrics: dict, checkpoint_path: Optional[str] = None) -> None:
        """Called by every rank at each log step and checkpoint; rank 0 passes the checkpoint."""

    def stop_requested(self) -> bool:
        """Rank 0, at each stop point (train/stops.py): did the driver ask the run to save and stop?"""
        return False

    def preemption(self) -> Optional[tuple]:
        """Every rank, at each stop point, equally often (a barrier under Ray): (key, description) of a
        drain notice for a node of this run, or None."""
        return None
