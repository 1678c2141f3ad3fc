"""One launch path: `launch(cfg) -> RunResult`, in local mode, on Ray Train, or inside a Tune trial.

    run.workers == 0   the loop runs in this process (CUDA when present, else the CPU),
                       reporting to `reporter` (local: RUN_DIR only; a Tune trial: Tune)
    run.workers  > 0   a Ray Train run of that many workers (distributed/ray_train.py);
                       `callbacks` are Ray Train callbacks, e.g. Tune's TuneReportCallback
                       when the run is a nested Tune trial, and `stop_flag` the
                       sweep's StopFlag its rank 0 reads (tune/stops.py)

It sits in layer 5 with `distributed/` and `tune/` (docs/design.md): `tune/`'s trials
call it, and it is above `train/`, which never imports Ray; it imports Ray (through
distributed/ray_train.py) only for workers > 0.
The config must have passed the preflight (began_dist/train/preflight.py). A run directory
that refuses its first write (an object store denying it) ends with Status.storage_error here;
later refusals end the same way through the loop's storage check (train/writes.py).
"""

from __future__ import annotations

from typing import Optional

from omegaconf import DictConfig

from began_dist import storage
from began_dist.config import ConfigError, to_container
from began_dist.data import DataError
from began_dist.train.loop import Trainer, run_trainer
from began_dist.train.reporting import Reporter
from began_dist.train.result import RunResult, Status

__all__ = ["RunResult", "Status", "launch"]


def launch(cfg: DictConfig, reporter: Optional[Reporter] = None, callbacks: tuple = (), progress: bool = True,
           stop_flag=None) -> RunResult:
    """Train `cfg` to `cfg.train.steps` (or until stopped) and say how it ended."""
    try:
        storage.makedirs(cfg.run.dir)
        if cfg.run.workers > 0:
            from began_dist.distributed.ray_train import run_on_ray

            return run_on_ray(cfg, callbacks, stop_flag)
        return run_trainer(Trainer(to_container(cfg), reporter), progress)
    except (ConfigError, DataError) as error:  # e.g. a placement the cluster can never satisfy
        return RunResult(Status.refused, run_dir=cfg.run.dir, message=str(error))
    except storage.StorageError as error:
        return RunResult(Status.storage_error, run_dir=cfg.run.dir,
                         message=f"run.dir={storage.display(cfg.run.dir)}: {error}")
