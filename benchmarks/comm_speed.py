"""Communication at cluster scale, emulated: 1 worker vs 2 workers on separate testbed hosts, link capped.

    python benchmarks/comm_speed.py [--steps 40] [--size 64] [--compressions none fp16 bf16 powersgd]
                                    [--factor F] [--dry-run]

Needs (it checks, and says what is missing, exit 0, before any work):
- a testbed of at least 3 hosts (`cluster/testbed up 3`: host0 the head, host1 and host2 one
  training worker each, 1 CPU each); this script never brings one up or down;
- `run.dir` on the testbed's object store (`BEGAN_TESTBED_STORE`), which no host-local path can
  replace (no host sees another's disk; cluster/README.md).

What it runs (issue 21, item 4): the link is scaled to the compute by a stated factor, this
machine's measured 64 px step time divided by 12 ms (the GPU step time cluster/README.md
assumes; `--factor` overrides the measurement), so 100 Gbit/s / factor stands for a datacenter
link next to GPUs and 10 Gbit/s / factor for a commodity one. For each link (`cluster/testbed
limit HOST RATE` on host1 and host2, lifted afterwards) it trains the same config on 1 worker
and on 2 workers (per-worker batch 16) with each `run.grad_compression`, and prints images/s
and the scaling efficiency (2-worker rate / twice the 1-worker rate). `--dry-run` prints the
plan (factor, rates) only. Not done yet: bytes all-reduced per step (comm.GradientSync counts
them, the loop does not log them), the per-rank share of the step spent waiting on
communication (`perf/comm_wait_s`), the M/SWD check of the best compression over two seeds,
and the 8/64-node projection table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTBED = os.path.join(REPO, "cluster", "testbed")
GPU_STEP_S = 0.012  # the GPU step time cluster/README.md assumes for 64 px, batch 16
LINKS_GBIT = {"datacenter": 100.0, "commodity": 10.0}
PER_WORKER_BATCH = 16
WORKER_HOSTS = ("host1", "host2")


def testbed_status() -> dict | None:
    """`cluster/testbed status` (hosts and the client environment), or None when no testbed is up."""
    try:
        done = subprocess.run([TESTBED, "status"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return json.loads(done.stdout)


def missing(status: dict | None) -> list[str]:
    if status is None:
        return ["a testbed: `cluster/testbed up 3` (root; another helper may hold the machine's one testbed)"]
    needs = []
    alive = [name for name, host in status["hosts"].items() if host.get("alive")]
    if not set(("host0", *WORKER_HOSTS)) <= set(alive):
        needs.append(f"hosts host0, host1, host2 alive (alive: {', '.join(alive) or 'none'})")
    if not status["env"].get("BEGAN_TESTBED_STORE"):
        needs.append("BEGAN_TESTBED_STORE in `cluster/testbed env` (the store for run.dir)")
    if not run_dir_takes_uris():
        needs.append("run.dir on object storage (an s3:// run.dir is still made a local path)")
    return needs


def run_dir_takes_uris() -> bool:
    """Whether the config layer keeps an s3:// run.dir as a URI (the multi-host run-dir work)."""
    from omegaconf import OmegaConf

    from began_dist.config import Config, resolve_run_dir

    cfg = OmegaConf.structured(Config)
    cfg.run.dir = "s3://bucket/run"
    return resolve_run_dir(cfg).startswith("s3://")


def store_dir(store: str, name: str) -> str:
    """A sub-path of the store URI, before its `?` query (cluster/README.md)."""
    base, _, query = store.partition("?")
    return f"{base}/comm_speed/{name}" + (f"?{query}" if query else "")


def local_step_s(size: int, filters: int = 64, steps: int = 3) -> float:
    """This machine's step time (1 process, this process's threads, batch 16, n = Nz = Nh = `filters`, RGB):
    the median of `steps` timed steps after one warm-up."""
    import torch

    from began_dist import families  # noqa: F401  (registers the families' config rules)
    from began_dist.config import load_config
    from began_dist.families.began import BeganFamily

    cfg = load_config(None, [f"model.image_size={size}", "model.channels=3", f"model.filters={filters}",
                             f"model.nz={filters}", f"model.nh={filters}", "model.convs_per_scale=2",
                             f"train.batch_size={PER_WORKER_BATCH}"])
    family = BeganFamily(cfg, torch.device("cpu"))
    real = torch.rand(PER_WORKER_BATCH, 3, size, size) * 2 - 1
    z = torch.rand(2, PER_WORKER_BATCH, filters) * 2 - 1
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        family.train_step(real, z)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def train(env: dict, run_dir: str, size: int, workers: int, steps: int, compression: str) -> list[dict]:
    """One `began-dist train` as a Ray job on the testbed; returns its stats.jsonl lines."""
    overrides = [
        f"model.image_size={size}", "model.channels=3", "data.glyphs=512",
        f"train.batch_size={PER_WORKER_BATCH * workers}",
        f"train.steps={steps}", "train.log_every=10", f"train.checkpoint_every={steps}", f"train.sample_every={steps}",
        f"run.grad_compression={compression}", "run.powersgd_start_step=2", "run.worker_resources.train_slot=1",
        f"run.dir={run_dir}",
    ]
    command = ["ray", "job", "submit", "--working-dir", REPO, "--", "began-dist", "train",
               "--workers", str(workers), *overrides]
    subprocess.run(command, env={**os.environ, **env}, check=True, timeout=3600)
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(run_dir)
    with fs.open_input_stream(f"{path}/stats.jsonl") as handle:
        return [json.loads(line) for line in handle.read().decode().splitlines()]


def limit(rate: str) -> None:
    for host in WORKER_HOSTS:
        subprocess.run([TESTBED, "limit", host, rate], check=True, timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per run (the first log interval is warm-up)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--compressions", nargs="+", default=["none", "fp16", "bf16", "powersgd"])
    parser.add_argument("--factor", type=float, help="step time here / 12 ms (default: measured)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    args = parser.parse_args()

    factor = args.factor or local_step_s(args.size) / GPU_STEP_S
    rates = {name: f"{gbit * 1000 / factor:.0f}mbit" for name, gbit in LINKS_GBIT.items()}
    print(f"link factor {factor:.1f}: " + ", ".join(f"{name} {gbit:g} Gbit/s -> {rates[name]}"
                                                   for name, gbit in LINKS_GBIT.items()))
    status = testbed_status()
    needs = missing(status)
    if needs or args.dry_run:
        for need in needs:
            print(f"comm_speed: needs {need}")
        print("plan: per link, `cluster/testbed limit host1|host2 RATE`, then 1 and 2 workers per compression:"
              f" {', '.join(args.compressions)}")
        return 0
    env, stamp = status["env"], time.strftime("%Y%m%d-%H%M%S")
    rows = []
    try:
        for link, rate in rates.items():
            limit(rate)
            for compression in args.compressions:
                per_workers = {}
                for workers in (1, 2):
                    run_dir = store_dir(env["BEGAN_TESTBED_STORE"], f"{stamp}/{link}-{compression}-{workers}w")
                    lines = train(env, run_dir, args.size, workers, args.steps, compression)
                    per_workers[workers] = statistics.median(line["images_per_s"] for line in lines[1:])
                rows.append((link, rate, compression, per_workers[1], per_workers[2],
                             per_workers[2] / (2 * per_workers[1])))
    finally:
        limit("off")
    print(f"\n{'link':<11} {'rate':>9} {'compression':<11} {'1w img/s':>9} {'2w img/s':>9} {'scaling':>8}")
    for link, rate, compression, one, two, efficiency in rows:
        print(f"{link:<11} {rate:>9} {compression:<11} {one:>9.2f} {two:>9.2f} {efficiency:>8.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
