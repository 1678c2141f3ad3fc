"""One Tune trial: the per-worker loop, run in the trial or as a nested Ray Train run.

    workers_per_trial == 1   the trial runs `Trainer` itself with a `TuneReporter`: every
                             log step is a Tune result, every checkpoint a Tune checkpoint
                             (PBT exploits copy it; a restarted trial continues from it)
    workers_per_trial > 1    the trial drives a `TorchTrainer` (the `began-dist train
                             --workers N` path) whose storage is the trial's own RUN_DIR/ray,
                             so a restarted trial resumes it; `TuneReportCallback` forwards
                             rank 0's results (ASHA and grid only)

Each trial's run directory is SWEEP_DIR/trials/<trial_id>, with the Contract's layout.
"""

from __future__ import annotations

import math
import os

from began_dist.config import to_container, validate
from began_dist.tune.spec import apply_params

NON_FINITE = "non_finite"


def trial_dir(sweep_dir: str, trial_id: str) -> str:
    return os.path.join(sweep_dir, "trials", trial_id)


def run_trial(params: dict, base: dict, spec: dict, sweep_dir: str) -> None:
    """The Tune function trainable: `params` is this trial's point of the space."""
    from ray import tune

    cfg = apply_params(base, params)
    cfg.run.dir = trial_dir(sweep_dir, tune.get_context().get_trial_id())
    validate(cfg)
    os.makedirs(cfg.run.dir, exist_ok=True)
    error = _nested(cfg) if spec["workers_per_trial"] > 1 else _direct(cfg)
    if error:
        # A NaN run would only NaN again: end the trial as the worst result, with the reason.
        worst = math.inf if spec["mode"] == "min" else -math.inf
        tune.report({spec["metric"]: worst, "M": math.inf, "status": NON_FINITE, "error": error})


def _direct(cfg) -> str:
    from began_dist.train.loop import NonFiniteLoss, Trainer
    from began_dist.train.reporting import TuneReporter

    trainer = Trainer(to_container(cfg), TuneReporter())
    try:
        trainer.run(progress=False)
    except NonFiniteLoss as error:
        return str(error)
    return ""


def _nested(cfg) -> str:
    from ray.tune.integration.ray_train import TuneReportCallback

    from began_dist.distributed.ray_train import run_on_ray

    result = run_on_ray(cfg, callbacks=(TuneReportCallback(),))
    return result.get("error", "") if result.get("status") == NON_FINITE else ""
