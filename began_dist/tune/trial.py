"""One Tune trial: the per-worker loop, run in the trial or as a nested Ray Train run.

    workers_per_trial == 1   the trial runs `Trainer` itself with a `TuneReporter`: every
                             log step is a Tune result, every checkpoint a Tune checkpoint
                             (PBT exploits copy it; a restarted trial continues from it)
    workers_per_trial > 1    the trial drives a `TorchTrainer` (the `began-dist train
                             --workers N` path) whose storage is the trial's own RUN_DIR/ray,
                             so a restarted trial resumes it; `TuneReportCallback` forwards
                             rank 0's results (ASHA and grid only)

Each trial's run directory is SWEEP_DIR/trials/<trial_id>, with the layout of docs/design.md.
Either kind reads the sweep's StopFlag at its stop points: a SIGINT/SIGTERM to the driver makes it
save its last completed step and wait for Tune to stop it (tune/stops.py).
"""

from __future__ import annotations

import math

from began_dist import storage
from began_dist.config import validate
from began_dist.launch import launch
from began_dist.train.result import Status
from began_dist.tune.spec import apply_params


def trial_dir(sweep_dir: str, trial_id: str) -> str:
    return storage.join(sweep_dir, "trials", trial_id)


def run_trial(params: dict, base: dict, spec: dict, sweep_dir: str, stop_flag=None) -> None:
    """The Tune function trainable: `params` is this trial's point of the space; `stop_flag` the sweep's."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    cfg = apply_params(base, params)
    cfg.run.dir = trial_dir(sweep_dir, trial_id)
    validate(cfg)
    if spec["workers_per_trial"] > 1:
        from ray.tune.integration.ray_train import TuneReportCallback

        result = launch(cfg, callbacks=(TuneReportCallback(),), progress=False, stop_flag=stop_flag)
    else:
        from began_dist.tune.reporting import TuneReporter

        result = launch(cfg, reporter=TuneReporter(stop_flag), progress=False)
    if result.status is Status.interrupted and stop_flag is not None:
        from began_dist.tune.stops import saved_then_wait

        saved_then_wait(stop_flag, trial_id, result.step)
    elif result.status is Status.non_finite:
        # A NaN run would only NaN again: end the trial as the worst result, with the reason. Tune's
        # results are JSON, so the status travels as its value and is read back as a Status (sweep.py).
        worst = math.inf if spec["mode"] == "min" else -math.inf
        tune.report({spec["metric"]: worst, "M": math.inf, "status": result.status.value, "error": result.message})
    elif result.status is not Status.done:
        raise RuntimeError(f"trial {cfg.run.dir}: {result.status.value}: {result.message}")  # Tune retries it
