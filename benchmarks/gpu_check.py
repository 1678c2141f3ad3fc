"""A GPU check, ready for the day a GPU is lent: everything GPU-only, in one command.

    make gpu-check                                          # = python benchmarks/gpu_check.py --out runs/gpu-check-...
    python benchmarks/gpu_check.py --out DIR                # on CUDA; without a GPU it says so and exits 0
    python benchmarks/gpu_check.py --out DIR --device cpu   # every stage on the CPU: a dry run of the script

Stages, each a subprocess with its own time limit inside a total budget (8 minutes),
its output in DIR/<stage>.log:

  cuda_tests        pytest -m cuda: every CUDA-marked test (the step-equivalence ones come next)
  step_equivalence  tests/test_step_equivalence.py with BEGAN_TEST_DEVICE=<device>: our step
                    against the plain port in fp32, channels_last, torch.compile, and on CUDA
                    bf16 and fp16 autocast against fp32
  step_speed        benchmarks/step_speed.py: ours against the plain port, 64 and 128 px, with
                    ours in NCHW and under bf16 autocast as variants (docs/performance.md)
  ray_train         a Ray Train run of a tiny model: 1 worker over NCCL (2 when 2 GPUs are
                    there), or over gloo on the CPU

Nothing leaves the machine: Ray starts a local cluster on 127.0.0.1 with its usage
reporting off, and the data are the built-in glyphs. DIR gets gpu_check.json (every
stage's status, time and figures) and gpu_check.txt (the console table). The exit code
is 0 when every stage passed (or there is no GPU to check), 1 otherwise.
`--smoke` shrinks the model and the timings: what the CI test runs with --device cpu.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET_S = 8 * 60
# The Ray run: a small model for a few steps (global batch 16: 8 a worker on 2 GPUs).
RAY_RUN = {"model.image_size": 32, "model.filters": 32, "model.nz": 32, "model.nh": 32, "data.glyphs": 256}
RAY_RUN |= {"train.batch_size": 16, "train.steps": 4, "train.log_every": 1, "train.checkpoint_every": 4}
RAY_SMOKE = {"model.image_size": 16, "model.filters": 8, "model.nz": 8, "model.nh": 8, "model.convs_per_scale": 1}
RAY_SMOKE |= {"data.glyphs": 64, "train.batch_size": 4}
SMOKE_SPEED = ["--sizes", "16", "--filters", "8", "--latent", "8", "--batch", "4", "--archs", "skip"]
SMOKE_SPEED += ["--repeats", "1", "--matmul-repeats", "1", "--conv-repeats", "1"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for gpu_check.json, gpu_check.txt and the logs")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a dry run of every stage")
    parser.add_argument("--smoke", action="store_true", help="smallest sizes and timings (the CI dry run)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all stages together")
    return parser.parse_args(argv)


def stage_commands(args, gpus: int) -> list[tuple[str, list[str], dict, float]]:
    """(name, command, extra environment, time cap in seconds) of every stage, in order."""
    python, cuda = sys.executable, args.device == "cuda"
    pytest = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    speed = [python, "benchmarks/step_speed.py", "--device", args.device, "--orders", "alternating", "simultaneous"]
    speed += SMOKE_SPEED if args.smoke else ["--sizes", "64", "128", "--variants", "nchw", "cl-bf16"]
    speed += ["--json", os.path.join(args.out, "step_speed.json")]
    equivalence = [*pytest, "tests/test_step_equivalence.py"]
    if args.smoke:  # compiling takes minutes on a small CPU; the CPU suite runs those tests anyway
        equivalence += ["-k", "not compiled"]
    workers = max(1, min(gpus, 2)) if cuda else 1
    overrides = RAY_RUN | (RAY_SMOKE if args.smoke else {}) | {"run.dir": os.path.join(args.out, "ray_run")}
    ray = [python, "-m", "began_dist", "train", *(f"{key}={value}" for key, value in overrides.items())]
    ray += ["--workers", str(workers), "--gpus-per-worker", "1" if cuda else "0", f"train.device={args.device}"]
    return [
        ("cuda_tests", [*pytest, "-m", "cuda", "tests", "--ignore=tests/test_step_equivalence.py"], {}, 120),
        ("step_equivalence", equivalence, {"BEGAN_TEST_DEVICE": args.device}, 120),
        ("step_speed", speed, {}, 150),
        ("ray_train", ray, {}, 120),
    ]


def pytest_details(log: str) -> dict:
    """Counts from pytest's last summary line ("3 passed, 2 skipped in 4.1s")."""
    counts = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected)")
    lines = [line for line in log.splitlines() if counts.search(line)]
    return {kind: int(n) for n, kind in counts.findall(lines[-1])} if lines else {}


def _figure(value: float) -> float:
    return float(f"{value:.3g}")


def speed_details(path: str) -> dict:
    """Per (px, arch, order): ours / plain port, necessary GFLOP/s and its share of the ceiling."""
    with open(path) as handle:
        summary = json.load(handle)
    rows = {}
    for r in summary["results"]:
        rows[f"{r['size']} px {r['arch']} {r['order']}"] = {
            "ours_over_ref": _figure(r["ours_over_ref"]),
            "need_gflops": _figure(r["need_gflops"]),
            "need_over_ceiling": _figure(r["need_gflops"] / r["ceiling"]),
            **{
                f"{name}_speedup": _figure(statistics.median(v["speedup_over_ours"]))
                for name, v in r.get("variants", {}).items()
            },
        }
    return {"machine": summary["machine"], "rows": rows}


def ray_details(run_dir: str, workers: int) -> dict:
    stats = os.path.join(run_dir, "stats.jsonl")
    if not os.path.exists(stats):
        raise RuntimeError(f"{stats} was not written")
    with open(stats) as handle:
        lines = [json.loads(line) for line in handle]
    if not lines or lines[-1].get("step") != 4:
        raise RuntimeError(f"{stats}: expected 4 steps, got {[line.get('step') for line in lines]}")
    last = lines[-1]
    return {"workers": workers, "steps": last["step"], **{k: last[k] for k in ("L_x", "k_t", "M") if k in last}}


def run_stage(name: str, command: list[str], env: dict, cap: float, out: str) -> dict:
    """Run one stage in its own process group, so a stage over its time limit goes with all it
    started (pytest's Ray cluster, the Ray run's raylet and workers)."""
    log_path = os.path.join(out, f"{name}.log")
    started = time.perf_counter()
    stage = {"name": name, "command": " ".join(command), "log": log_path, "time_limit_s": round(cap)}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = process.wait(timeout=cap)
            stage["status"] = "passed" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            stage["status"] = f"timed out after {cap:.0f} s"
        finally:
            stop_group(process)
    stage["seconds"] = round(time.perf_counter() - started, 1)
    return stage


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM, then after 10 s SIGKILL, to whatever is left of the stage's process group."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:  # the whole group has exited
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:  # the leader is gone; give the rest of the group time
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def stage_env(extra: dict, ray_tmp: str) -> dict:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")  # this checkout, not another install
    env["RAY_USAGE_STATS_ENABLED"] = "0"  # Ray would otherwise report usage over the network
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # A Ray temp dir of our own: ray.init() without an address joins the cluster a `ray start`
    # on this machine last wrote to <temp dir>/ray/ray_current_cluster, when there is one.
    env["RAY_TMPDIR"] = ray_tmp
    env.pop("RAY_ADDRESS", None)
    return env


def details_of(name: str, stage: dict, args, workers: int) -> dict:
    with open(stage["log"]) as handle:
        log = handle.read()
    if name in ("cuda_tests", "step_equivalence"):
        return pytest_details(log)
    if name == "step_speed":
        return speed_details(os.path.join(args.out, "step_speed.json"))
    return ray_details(os.path.join(args.out, "ray_run"), workers)


def table(summary: dict) -> str:
    lines = [
        f"gpu check on {summary['device']}: {summary['machine']}",
        f"torch {summary['torch']}, CUDA {summary['cuda']}, {summary['gpus']} GPU(s); "
        f"{summary['seconds']:.0f} s of a {summary['budget_s']:.0f} s budget",
        "",
        f"{'stage':18} {'status':24} {'s':>6}  details",
    ]
    for stage in summary["stages"]:
        details = stage.get("details", {})
        text = ", ".join(f"{k} {v}" for k, v in details.items() if k != "rows" and k != "machine")
        lines.append(f"{stage['name']:18} {stage['status']:24} {stage['seconds']:6.1f}  {text}")
        for key, row in details.get("rows", {}).items():
            lines.append(f"{'':50}{key}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    lines.append(f"\n{'all stages passed' if summary['ok'] else 'SOME STAGES FAILED'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out = os.path.abspath(args.out)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here, nothing to check (--device cpu runs every stage on the CPU)")
        return 0
    os.makedirs(args.out, exist_ok=True)
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    machine = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU dry run"
    summary = {
        "device": args.device,
        "machine": machine,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": gpus,
        "smoke": args.smoke,
        "budget_s": args.budget,
        "stages": [],
    }
    started = time.perf_counter()
    ray_tmp = tempfile.mkdtemp(prefix="gpu-check-ray-")  # short: Ray's socket paths must fit 107 bytes
    try:
        for name, command, extra_env, cap in stage_commands(args, gpus):
            left = args.budget - (time.perf_counter() - started)
            if left < 5:
                summary["stages"].append({"name": name, "status": "not run (budget spent)", "seconds": 0.0})
                continue
            print(f"gpu_check: {name} ...", flush=True)
            stage = run_stage(name, command, stage_env(extra_env, ray_tmp), min(cap, left), args.out)
            if stage["status"] == "passed":
                try:
                    stage["details"] = details_of(name, stage, args, max(1, min(gpus, 2)))
                except (OSError, ValueError, KeyError, RuntimeError) as error:
                    stage["status"] = f"failed ({error})"
            summary["stages"].append(stage)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["ok"] = all(stage["status"] == "passed" for stage in summary["stages"])
    text = table(summary)
    print(text)
    with open(os.path.join(args.out, "gpu_check.txt"), "w") as handle:
        handle.write(text + "\n")
    with open(os.path.join(args.out, "gpu_check.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
