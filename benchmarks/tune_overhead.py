"""What a Tune sweep costs beyond its trials' training: wall time vs the ideal, per-trial start-up.

    python benchmarks/tune_overhead.py [--steps 200] [--size 16] [--concurrency 2]

Starts a local Ray cluster on 127.0.0.1 with `--concurrency` logical CPUs, then runs:
  1. a 4-trial sweep of empty trials (each reports once and returns): Tune's own cost
     per trial (actor start, imports, scheduling, result handling);
  2. a 4-trial `tune/smoke.yaml`-style sweep (4 gammas, no early stopping, `--steps`
     steps each, the usual checkpoints and SWD evaluations);
  3. the baseline, measured in this run: the same 4 training runs in local mode, one
     after another in this process (no Ray), divided by the concurrency.
It prints one table: sweep wall time, the ideal (sum of the trials' own time / concurrency),
the overhead per trial and where it goes.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: stay on 127.0.0.1

from omegaconf import OmegaConf  # noqa: E402

from began_dist.config import to_container  # noqa: E402
from began_dist.tune.spec import load_spec  # noqa: E402
from began_dist.tune.sweep import prepare_sweep_dir, run_sweep, trial_base  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIALS = 4


def start_cluster(cpus: int):
    import ray
    from ray._raylet import Config

    token = os.path.join(tempfile.mkdtemp(), "token")
    with open(token, "w") as handle:
        handle.write(secrets.token_hex(32))
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token)
    Config.initialize("")
    started = time.perf_counter()
    ray.init(num_cpus=cpus, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    return time.perf_counter() - started


def empty_trial(params: dict) -> None:
    from ray import tune

    tune.report({"M": params["x"], "step": 1})


def empty_sweep(root: str, concurrency: int) -> float:
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(empty_trial, {"CPU": 1}),
        param_space={"x": tune.grid_search(list(range(TRIALS)))},
        tune_config=tune.TuneConfig(metric="M", mode="min", max_concurrent_trials=concurrency, reuse_actors=False),
        run_config=tune.RunConfig(name="empty", storage_path=root, verbose=0),
    )
    started = time.perf_counter()
    tuner.fit()
    return time.perf_counter() - started


def sweep_spec(args, root: str):
    overrides = [
        f"train.steps={args.steps}",
        f"model.image_size={args.size}",
        "tune.scheduler.type=none",  # every trial runs all its steps
        f"tune.max_concurrent_trials={args.concurrency}",
        f"run.dir={os.path.join(root, 'sweep')}",
    ]
    spec, base = load_spec(os.path.join(REPO, "tune", "smoke.yaml"), overrides)
    return prepare_sweep_dir(spec, trial_base(spec, base), resume=False)


def training_sweep(spec, base) -> tuple[float, list[dict]]:
    started = time.perf_counter()
    rows = run_sweep(spec, base)
    return time.perf_counter() - started, rows


def trial_seconds(sweep_dir: str, trial: str) -> tuple[float, float]:
    """(seconds from the trial's first to its last log line, its step time) from its run directory."""
    import json

    run_dir = os.path.join(sweep_dir, "trials", trial)
    with open(os.path.join(run_dir, "log.txt")) as handle:
        stamps = [line[:19] for line in handle if line[:4].isdigit()]
    first, last = (time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) for stamp in (stamps[0], stamps[-1]))
    with open(os.path.join(run_dir, "stats.jsonl")) as handle:
        step_time = [json.loads(line) for line in handle][-1]["time_s"]
    return last - first, step_time


def local_baseline(base, root: str) -> float:
    """The 4 trials' training in local mode, one after another in this process (no Ray)."""
    from began_dist.train.loop import train_loop

    started = time.perf_counter()
    for i, gamma in enumerate((0.3, 0.5, 0.7, 1.0)):
        cfg = base.copy()
        cfg.train.gamma, cfg.run.dir, cfg.run.workers = gamma, os.path.join(root, f"local-{i}"), 0
        train_loop(to_container(cfg), progress=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=2, help="logical CPUs of the cluster = trials at once")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="tune-overhead-")
    import torch

    torch.set_num_threads(1)  # as each 1-CPU trial runs
    cluster_s = start_cluster(args.concurrency)
    empty_s = empty_sweep(root, args.concurrency)
    spec, base = sweep_spec(args, root)
    sweep_s, rows = training_sweep(spec, base)
    logged = [trial_seconds(base.run.dir, row["trial"]) for row in rows]
    import ray

    ray.shutdown()
    local_s = local_baseline(OmegaConf.create(to_container(base)), root)
    c = args.concurrency
    trial_wall = sum(seconds for seconds, _ in logged)
    step_time = sum(steps for _, steps in logged)
    ideal_local = local_s / c
    per_trial = (sweep_s - ideal_local) * c / TRIALS
    table = [
        ("local cluster start (once)", cluster_s, ""),
        (f"{TRIALS} empty trials: sweep wall", empty_s, f"{empty_s * c / TRIALS:.2f} s per trial slot"),
        (f"{TRIALS} training trials: sweep wall", sweep_s, f"{args.steps} steps of {args.size} px each"),
        ("  trials' logged time / concurrency", trial_wall / c, "first to last log line of each trial"),
        ("  trials' step time / concurrency", step_time / c, "time_s: the training steps only"),
        ("baseline: local mode x4 / concurrency", ideal_local, "same runs, this process, no Ray"),
        ("overhead per trial", per_trial, "(sweep wall - baseline) x concurrency / trials"),
        ("  of which Tune's empty-trial cost", empty_s * c / TRIALS, "actor start, imports, scheduling"),
    ]
    print(
        f"\nTune sweep overhead: {TRIALS} trials, concurrency {c}, {args.steps} steps at {args.size} px "
        f"(load {os.getloadavg()[0]:.1f}, python {sys.version.split()[0]})\n"
    )
    print("| quantity | seconds | note |\n|---|---|---|")
    for name, seconds, note in table:
        print(f"| {name} | {seconds:.1f} | {note} |")
    print(
        f"\nsweep wall / baseline: {sweep_s / ideal_local:.2f}x; "
        f"steps are {step_time / max(trial_wall, 1e-9):.0%} of the trials' logged time"
    )


if __name__ == "__main__":
    main()
