"""The loop's reporter inside a Tune trial that runs the loop itself (one worker).

Tune keeps the checkpoints and decides restores: `tune.get_checkpoint()` is the
trial's own checkpoint after a restart, or the donor's after a PBT exploit, which
is told apart by the run directory recorded in the checkpoint's config.
"""

from __future__ import annotations

from typing import Optional

from ray import tune

from began_dist import storage
from began_dist.distributed.reporting import checkpoint_file, staged
from began_dist.train.reporting import Reporter


class TuneReporter(Reporter):
    def load_latest(self, run_dir: str) -> tuple[Optional[dict], Optional[str]]:
        reported = checkpoint_file(tune.get_checkpoint())
        if reported is None:  # a new trial (or one Tune never saw a checkpoint of)
            return super().load_latest(run_dir)
        step, state, path = reported
        donor = state.get("config", {}).get("run", {}).get("dir", "")
        if donor and storage.resolve(donor) != storage.resolve(run_dir):
            return state, f"PBT exploit: checkpoint of {donor} (step {step}, {path})"
        return state, f"Tune checkpoint {path}"

    def report(self, metrics: dict, checkpoint_path: Optional[str] = None) -> None:
        if checkpoint_path is None:
            tune.report(metrics)
            return
        with staged(checkpoint_path) as (directory, _):
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
