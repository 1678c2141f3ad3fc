"""`began-dist tune SPEC`: a Ray Tune sweep whose trials run the training loop.

    SWEEP_DIR/sweep.yaml        the resolved spec (what --resume runs again)
    SWEEP_DIR/base.yaml         the training config every trial starts from
    SWEEP_DIR/trials/<id>/      each trial's run directory (the layout of docs/design.md)
    SWEEP_DIR/tune/             Tune's experiment state and checkpoints (Tuner.restore)
    SWEEP_DIR/results.csv       every trial: searched values, M, SWD, k_t, steps; best first

The objective is M (minimised), from all-reduced values, unless the spec names an
evaluation metric; SWD and k_t are reported beside it in every case, because M is
confounded across gamma and Nh.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import tempfile
import time
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from began_dist import storage, uris
from began_dist.config import ConfigError, resolve_run_dir, to_container, validate
from began_dist.train import state as ckpt
from began_dist.train.preflight import check_run
from began_dist.train.result import Status
from began_dist.tune.spec import SweepSpec, load_spec, parse_domain, read_saved_spec, save_spec
from began_dist.tune.trial import run_trial, trial_dir

EXPERIMENT = "tune"  # SWEEP_DIR/tune: Tune's storage name, fixed so --resume finds it
ALWAYS_REPORTED = ("M", "swd", "k_t")


class SweepInterrupted(RuntimeError):
    """SIGINT arrived; Tune saved the sweep's state (exit 130, resume with --resume)."""


def main(spec_path: str, overrides: list[str], resume: bool = False) -> Status:
    """`began-dist tune SPEC [overrides] [--resume]`: check, run (or resume) and print the sweep.

    Returns Status.done, or Status.interrupted when the sweep stopped early (resume with --resume);
    refusals raise ConfigError/DataError before any Ray work.
    """
    if resume:
        refuse_resume_overrides(overrides)
    spec, base = load_spec(spec_path, overrides)
    if resume and not base.run.dir:
        raise ConfigError("--resume: give the sweep's directory as run.dir=SWEEP_DIR")
    base.run.dir = base.run.dir or default_sweep_dir(spec)
    resolve_run_dir(base)
    base = trial_base(spec, base)
    check_run(base)  # the preflight of every trial, once here
    spec, base = prepare_sweep_dir(spec, base, resume)
    try:
        rows = run_sweep(spec, base, resume)
    except SweepInterrupted as error:
        print(f"began-dist: {error}", file=sys.stderr)
        return Status.interrupted
    print(format_table(rows))
    print(best_line(spec, rows) or "no trial reported the objective")
    print(f"results: {storage.join(base.run.dir, 'results.csv')}")
    print(f"report:  began-dist report {base.run.dir}")
    return Status.done


RESUME_KEYS = ("run.dir", "run.address")  # what `tune --resume` takes: where the sweep is, where to run it


def refuse_resume_overrides(overrides: list[str]) -> None:
    """`tune --resume` continues the sweep its SWEEP_DIR records (sweep.yaml, base.yaml, Tune's state):
    Tune restores its trials and searcher as they were, and trials already run could not take a new
    value, so any other override would be silently dropped. Refuse them, naming each."""
    ignored = [item for item in overrides if item.split("=", 1)[0].strip() not in RESUME_KEYS]
    if ignored:
        raise ConfigError(
            f"--resume continues the sweep as it was started; these overrides cannot change it: {', '.join(ignored)} "
            f"(only {' and '.join(RESUME_KEYS)} are taken); start a new sweep in another run.dir to change them"
        )


# -- the base config each trial starts from ------------------------------------------------
def trial_base(spec: SweepSpec, base: DictConfig) -> DictConfig:
    """What every trial needs on top of the spec's base, checked once here."""
    cfg = base.copy()
    t = cfg.train
    if spec.scheduler_type == "pbt":
        interval = spec.scheduler["perturbation_interval"]
        if interval % t.checkpoint_every:
            t.checkpoint_every = interval  # an exploit copies the checkpoint of the perturbation step
    t.log_every = math.gcd(t.log_every, t.checkpoint_every)  # every checkpoint report carries M
    # SWD (and the objective, when it is a metric) beside M: evaluated at least at each checkpoint.
    metrics = [name for name in t.eval_metrics.split(",") if name] if t.eval_every else []
    for name in ("swd", spec.metric):
        if name != "M" and name not in metrics:
            metrics.append(name)
    t.eval_metrics = ",".join(metrics)
    t.eval_every = t.eval_every or t.checkpoint_every
    cfg.run.workers = spec.workers_per_trial if spec.workers_per_trial > 1 else 0
    cfg.run.cpus_per_worker, cfg.run.gpus_per_worker = float(spec.cpus_per_worker), float(spec.gpus_per_worker)
    if spec.scheduler_type == "pbt" and not storage.is_local(cfg.run.dir):
        # On an object store Tune's checkpoint is a reference to the trial's own file (stored once:
        # distributed/reporting.py), so the trial keeps every checkpoint a PBT exploit may copy, as
        # Tune keeps every reference (tune_checkpoints_to_keep).
        cfg.run.checkpoints_to_keep = max(cfg.run.checkpoints_to_keep, t.steps // t.checkpoint_every + 1)
    if cfg.data.path and not uris.uri_scheme(cfg.data.path, "data.path", ConfigError):
        cfg.data.path = os.path.abspath(cfg.data.path)  # trials run in Tune's trial directories; a URI stays
    validate(cfg)
    return cfg


def prepare_sweep_dir(spec: SweepSpec, base: DictConfig, resume: bool) -> tuple[SweepSpec, DictConfig]:
    """Create (or, with --resume, reopen) SWEEP_DIR; refuse a clash before any Ray work."""
    sweep_dir = base.run.dir
    spec_path, base_path = storage.join(sweep_dir, "sweep.yaml"), storage.join(sweep_dir, "base.yaml")
    saved = read_saved_spec(spec_path)
    if resume:
        if saved is None or not storage.isdir(storage.join(sweep_dir, EXPERIMENT)):
            raise ConfigError(f"--resume: run.dir={sweep_dir} holds no sweep to resume")
        resumed = OmegaConf.create(storage.read_text(base_path))
        resumed.run.dir, resumed.run.address = sweep_dir, base.run.address
        return saved, resumed
    if saved is not None or storage.isdir(storage.join(sweep_dir, EXPERIMENT)):
        raise ConfigError(f"run.dir={sweep_dir}: already holds a sweep; continue it with --resume")
    storage.makedirs(sweep_dir)
    save_spec(spec, spec_path)
    storage.write_text(base_path, OmegaConf.to_yaml(base, resolve=True))
    return spec, base


def default_sweep_dir(spec: SweepSpec) -> str:
    return os.path.join("runs", f"tune-{spec.name or 'sweep'}-{time.strftime('%Y%m%d-%H%M%S')}")


# -- Tune objects --------------------------------------------------------------------------
def _domain(name: str, values: list, for_pbt: bool = False):
    from ray import tune

    if for_pbt and name in ("grid", "choice"):
        return list(values)  # PBT mutates a list by stepping to a neighbouring value
    return {
        "grid": lambda: tune.grid_search(values),
        "choice": lambda: tune.choice(values),
        "uniform": lambda: tune.uniform(*values),
        "loguniform": lambda: tune.loguniform(*values),
        "randint": lambda: tune.randint(*values),
    }[name]()


def param_space(spec: SweepSpec) -> dict:
    return {group: _domain(*parse_domain(domain, f"space.{group}")) for group, domain in spec.space.items()}


def tune_checkpoints_to_keep(spec: SweepSpec, base) -> Optional[int]:
    """Tune's num_to_keep: the run's checkpoints_to_keep, but every checkpoint under PBT. An exploit
    restores the donor's checkpoint while the donor trains on; Ray deletes the donor's older ones
    by num_to_keep meanwhile, and a clone whose checkpoint was deleted under it restarts from its
    own weights with only the donor's hyperparameters (seen on 2 cores)."""
    return None if spec.scheduler_type == "pbt" else base.run.checkpoints_to_keep


def scheduler(spec: SweepSpec, steps: int):
    """Tune's scheduler for the spec; times are training steps (the `step` every result carries)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from began_dist.tune.pbt import FinalStepPBT

    settings = {key: value for key, value in spec.scheduler.items() if key != "type"}
    if spec.scheduler_type == "asha":
        settings.setdefault("max_t", steps)
        return ASHAScheduler(time_attr="step", **settings)
    if spec.scheduler_type == "pbt":
        mutations = {
            group: _domain(*parse_domain(domain, f"space.{group}"), for_pbt=True)
            for group, domain in spec.space.items()
        }
        return FinalStepPBT(steps, time_attr="step", hyperparam_mutations=mutations, **settings)
    return FIFOScheduler()


def trial_resources(spec: SweepSpec, base: DictConfig) -> dict:
    if spec.workers_per_trial > 1:
        return {"CPU": spec.driver_cpus}  # the nested TorchTrainer's workers ask for their own
    # A one-worker trial is the worker: it asks for what a worker asks for, run.worker_resources too
    # (e.g. a slot only training hosts offer), as check_trial_placement counted.
    return {"CPU": spec.cpus_per_worker, "GPU": spec.gpus_per_worker, **base.run.worker_resources}


def check_trial_placement(spec: SweepSpec, base: DictConfig) -> None:
    """Refuse a trial the cluster can never place, naming the spec key (not wait forever)."""
    from began_dist.distributed.placement import check_placement

    run = base.run.copy()
    run.workers = spec.workers_per_trial
    try:
        check_placement(run)
    except ConfigError as error:
        raise ConfigError(f"workers_per_trial/cpus_per_worker/gpus_per_worker: {error}") from None


def build_tuner(spec: SweepSpec, base: DictConfig, resume: bool, stops=None):
    """The Tuner of the sweep (restored from SWEEP_DIR/tune with --resume); `stops`: its SweepStops."""
    from ray import tune

    sweep_dir = base.run.dir
    flag = stops.flag if stops else None
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=to_container(base), spec=spec.to_dict(), sweep_dir=sweep_dir,
                             stop_flag=flag),
        trial_resources(spec, base),
    )
    experiment = storage.join(sweep_dir, EXPERIMENT)
    if resume:
        # The restored RunConfig's SweepStops is this driver's (tune/stops.py, active_stops).
        return tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            scheduler=scheduler(spec, base.train.steps),
            num_samples=spec.num_samples,
            max_concurrent_trials=spec.max_concurrent_trials or None,
            reuse_actors=False,  # a fresh process per trial: its own seeds, threads and CUDA state
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=sweep_dir,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=tune_checkpoints_to_keep(spec, base)),
            failure_config=tune.FailureConfig(max_failures=base.run.max_failures),
            callbacks=[stops] if stops else None,
            verbose=1,
        ),
    )


def run_sweep(spec: SweepSpec, base: DictConfig, resume: bool = False) -> list[dict]:
    """Run (or resume) the sweep; returns the results table, best trial first."""
    from began_dist.distributed.ray_train import connect
    from began_dist.tune.stops import SweepStops

    # A result may lack the objective: an evaluation metric is known only once a trial has evaluated, and
    # a trial stopped before its first log step reports its stop checkpoint with the step alone (tune/stops.py).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    started_here = connect(base.run.address)
    cwd = os.getcwd()
    try:
        check_trial_placement(spec, base)
        stops = SweepStops()  # SIGINT/SIGTERM: the running trials save their last completed step
        # Under `ray job submit` the driver's working directory is the job's unpacked
        # working_dir, which Ray may delete when the last trial actor using it exits
        # (ray-project/ray#52343); every path here is absolute, so work from the sweep dir
        # (the system's temporary directory when the sweep is on an object store).
        os.chdir(base.run.dir if storage.is_local(base.run.dir) else tempfile.gettempdir())
        with stops.handling():
            grid = build_tuner(spec, base, resume, stops).fit()
    finally:
        _chdir_back(cwd)
        if started_here:
            import ray

            ray.shutdown()
    rows = results_table(spec, base, list(grid))
    write_results(rows, storage.join(base.run.dir, "results.csv"))
    if len(rows) < expected_trials(spec) or any(row["status"] == "unfinished" for row in rows):
        raise SweepInterrupted(f"sweep interrupted; resume with: began-dist tune SPEC --resume run.dir={base.run.dir}")
    return rows


def _chdir_back(path: str) -> None:
    try:
        os.chdir(path)
    except OSError:
        pass  # it was the job's working_dir, and Ray removed it


def expected_trials(spec: SweepSpec) -> int:
    """Trials the sweep makes: num_samples x the grid's points (other domains are sampled per sample)."""
    count = spec.num_samples
    for domain in spec.space.values():
        name, values = parse_domain(domain, "space")
        count *= len(values) if name == "grid" else 1
    return count


# -- results -------------------------------------------------------------------------------
def results_table(spec: SweepSpec, base: DictConfig, results) -> list[dict]:
    """One row per trial (Tune's public `Result`s of the ResultGrid): its id, status, searched values,
    steps, M, SWD, k_t; sorted by the objective."""
    rows = []
    for result in results:
        last = result.metrics or {}
        trial_id = last["trial_id"]  # Tune fills it into every trial's last result, even before a report
        steps = (result.config or {}).get("train.steps", base.train.steps)  # a sweep may search train.steps
        row = {"trial": trial_id, "status": _status(result.error is not None, last, steps)}
        for group in spec.space:
            row[group] = (result.config or {}).get(group)
        row["step"] = last.get("step")
        for key in dict.fromkeys((spec.metric, *ALWAYS_REPORTED)):
            row[key] = last.get(key)
        row["checkpoint"] = ckpt.latest_checkpoint(trial_dir(base.run.dir, trial_id))
        rows.append(row)
    sign = 1 if spec.mode == "min" else -1

    def objective(row: dict) -> float:
        value = row.get(spec.metric)
        return sign * value if isinstance(value, (int, float)) and math.isfinite(value) else math.inf

    return sorted(rows, key=objective)


def _status(errored: bool, last: dict, steps: int) -> str:
    """done | stopped early (by the scheduler) | non-finite | error | unfinished (interrupted: --resume)."""
    if last.get("status") == Status.non_finite.value:
        return "non-finite"
    if errored:
        return "error"
    if (last.get("step") or 0) >= steps:  # its final checkpoint was written before this result
        return "done"  # (Tune's done flag may be missing: a driver killed before it saved the flag)
    if last.get("done"):  # Tune marks a trial's last result done when it returned or was stopped
        return "stopped early"
    return "unfinished"


def write_results(rows: list[dict], path: str) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["trial"])
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text(path, text.getvalue())


def format_table(rows: list[dict]) -> str:
    """The results as an aligned text table (the checkpoint column left out: printed for the best)."""
    if not rows:
        return "(no trials)"
    columns = [key for key in rows[0] if key != "checkpoint"]
    cells = [[_cell(row.get(key)) for key in columns] for row in rows]
    widths = [max(len(key), *(len(line[i]) for line in cells)) for i, key in enumerate(columns)]
    lines = ["  ".join(key.ljust(width) for key, width in zip(columns, widths))]
    lines += ["  ".join(text.ljust(width) for text, width in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def best_line(spec: SweepSpec, rows: list[dict]) -> Optional[str]:
    if not rows or rows[0].get(spec.metric) is None:
        return None
    best = rows[0]
    values = ", ".join(f"{group}={best[group]}" for group in spec.space)
    return (
        f"best trial {best['trial']} ({values}): {spec.metric}={_cell(best[spec.metric])}\n"
        f"best checkpoint: {best['checkpoint']}"
    )
