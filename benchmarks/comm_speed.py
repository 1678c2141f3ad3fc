"""Communication at cluster scale, emulated: 1 worker vs 2 workers on separate testbed hosts, link capped.

    python benchmarks/comm_speed.py [--up] [--links datacenter commodity] [--steps 12] [--log-every 4]
                                    [--size 64] [--compressions none none@4 fp16 bf16 powersgd powersgd:4]
                                    [--control] [--baselines 2|3] [--factor F] [--json PATH] [--dry-run]
    python benchmarks/comm_speed.py --project RESULT.json [RESULT.json ...]

Needs a testbed of 3 hosts (host0 the head, host1 and host2 one training worker each, 1 CPU
each) with its object store for `run.dir` (no host sees another's disk; cluster/README.md):
`--up` brings one up for this process (`cluster/testbed up 3 --owner PID`, so it goes when
this process does) and takes it down at the end; without `--up` it uses the one that is up,
and says what is missing (exit 0) when there is none. Take turns on the machine's one testbed
(`flock`, see the helpers' notes); one link per turn keeps a turn near 10 minutes.

What it measures (issue 21, item 4). The link is scaled to the compute by a stated factor:
the 1-worker step time measured in this run (the first 1-worker run; `--factor` overrides it)
divided by 12 ms, the GPU step time cluster/README.md assumes for 64 px, batch 16. So
100 Gbit/s / factor stands for a datacenter link next to GPUs and 10 Gbit/s / factor for a
commodity one. For each link (`cluster/testbed limit host1|host2 RATE`: each direction capped,
lifted afterwards) it trains the same 64 px BEGAN (batch 16 per worker) on 1 worker and on 2
workers with each `run.grad_compression`, the 1-worker baseline interleaved (before, between
and after the 2-worker runs) so both see the machine's load, and reads `stats.jsonl`:

- scaling efficiency, wall clock: the 2-worker step time against the 1-worker one (weak
  scaling: each worker keeps batch 16, so the ideal is the same step time);
- comm_bytes: bytes each rank hands to the gradient all-reduces per step;
- the share of each rank's step spent waiting on communication (comm_wait_s, the mean of the
  two ranks, and comm_wait_max_s; docs/performance.md defines the wait), and the efficiency
  this implies, 1 - wait share: what the link costs, apart from the machine's load, which
  slows the two workers' compute (two busy processes on two shared cores) but not one's.

`--control` adds a 2-worker plain run with the link uncapped: the wait that the machine's load
and the ranks' imbalance cause without any link. The first log interval (DDP's bucket rebuild,
PowerSGD's first plain passes) is left out. docs/performance.md has the results.
`--project` turns the JSON of earlier runs into the projection to 8 and 64 GPU nodes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTBED = os.path.join(REPO, "cluster", "testbed")
GPU_STEP_S = 0.012  # the GPU step time cluster/README.md assumes for 64 px, batch 16
LINKS_GBIT = {"datacenter": 100.0, "commodity": 10.0}
PER_WORKER_BATCH = 16
WORKER_HOSTS = ("host1", "host2")
# The projection's assumptions (printed with it): per all-reduce message latency of each link, and
# DDP's all-reduce calls per step (G's and D's buckets; PowerSGD sends P and Q for each).
LATENCY_S = {"datacenter": 5e-6, "commodity": 50e-6}
CALLS = {False: 4, True: 12}  # all-reduce calls per step, without / with PowerSGD
NODES = (2, 8, 64)


def testbed(*args: str, timeout: float = 120, check: bool = True, env: dict | None = None):
    return subprocess.run([TESTBED, *args], capture_output=True, text=True, timeout=timeout, check=check, env=env)


def testbed_status() -> dict | None:
    """`cluster/testbed status` (hosts and the client environment), or None when no testbed is up."""
    try:
        done = testbed("status", timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return json.loads(done.stdout) if done.returncode == 0 else None


def missing(status: dict | None) -> list[str]:
    if status is None:
        return ["a testbed: `cluster/testbed up 3` or --up (root; another helper may hold the machine's one testbed)"]
    alive = [name for name, host in status["hosts"].items() if host.get("alive")]
    needs = []
    if not set(("host0", *WORKER_HOSTS)) <= set(alive):
        needs.append(f"hosts host0, host1, host2 alive (alive: {', '.join(alive) or 'none'})")
    if not status["env"].get("BEGAN_TESTBED_STORE"):
        needs.append("BEGAN_TESTBED_STORE in `cluster/testbed env` (the store for run.dir)")
    return needs


def store_dir(store: str, name: str) -> str:
    """A sub-path of the store URI, before its `?` query (cluster/README.md)."""
    base, _, query = store.partition("?")
    return f"{base}/comm_speed/{name}" + (f"?{query}" if query else "")


def load() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def overrides(args, workers: int, compression: str) -> list[str]:
    """The training of every run: the 64 px BEGAN of step_speed.py (n = Nz = Nh = 64, two convs per scale),
    on the built-in glyphs (grayscale: 1 channel, against step_speed's 3; the first and last conv only)."""
    return [
        f"model.image_size={args.size}", "model.channels=1", "data.glyphs=512",
        f"train.batch_size={PER_WORKER_BATCH * workers}", f"train.steps={args.steps}",
        f"train.log_every={args.log_every}", f"train.checkpoint_every={args.steps}",
        f"train.sample_every={args.steps}", *compression_overrides(compression, args.powersgd_rank),
        "run.worker_resources.train_slot=1",
    ]


def preflight(args) -> None:
    """Every run's config and data source checked here, before a testbed turn is spent on them (exit 2)."""
    from began_dist import families  # noqa: F401  (registers the families' config rules)
    from began_dist.config import load_config
    from began_dist.data import check_source

    for compression in args.compressions:
        check_source(load_config(None, overrides(args, 2, compression)))


def train(env: dict, run_dir: str, args, workers: int, compression: str, log_path: str) -> list[dict]:
    """One `began-dist train` as a Ray job on the testbed (workers on host1, host2); its stats.jsonl lines."""
    command = ["ray", "job", "submit", "--", "began-dist", "train", "--workers", str(workers),
               *overrides(args, workers, compression), f"run.dir={run_dir}"]
    with open(log_path, "w") as log:
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)}: exit {done.returncode}, see {log_path}")
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(run_dir)
    with fs.open_input_stream(f"{path}/stats.jsonl") as handle:
        return [json.loads(line) for line in handle.read().decode().splitlines()]


def compression_overrides(compression: str, default_rank: int) -> list[str]:
    """`none`, `fp16`, `bf16`, `powersgd` or `powersgd:R` (rank R) as config overrides; each may end in
    `@MB`, DDP's bucket size (run.bucket_cap_mb; `none@4`: plain DDP with 4 MB buckets)."""
    spec, _, bucket_mb = compression.partition("@")
    name, _, rank = spec.partition(":")
    bucket = [f"run.bucket_cap_mb={bucket_mb}"] if bucket_mb else []
    return [f"run.grad_compression={name}", f"run.powersgd_rank={rank or default_rank}", "run.powersgd_start_step=2",
            *bucket]  # fmt: skip


def summarise(lines: list[dict]) -> dict:
    """Medians over the log intervals after the first: step time and the comm figures per step."""
    measured = lines[1:] or lines
    med = {key: statistics.median(line[key] for line in measured)
           for key in ("images_per_s", "comm_bytes", "comm_wait_s", "comm_wait_max_s")}
    step_s = [line["world_size"] * PER_WORKER_BATCH / line["images_per_s"] for line in measured]
    return {**med, "step_s": statistics.median(step_s), "step_s_all": step_s, "M": measured[-1].get("M")}


def limit(rate: str, env: dict) -> None:
    for host in WORKER_HOSTS:
        testbed("limit", host, rate, env=env)


def run_link(link: str, args, env: dict, out_dir: str, stamp: str, factor: float | None) -> tuple[dict, float]:
    """The runs of one link: 1 worker, then 2 workers per compression with the 1-worker run between and after."""
    result: dict = {"link": link, "one": [], "two": {}}

    def one_run(workers: int, compression: str, tag: str = "") -> dict:
        label = compression.replace(":", "-r").replace("@", "-b")
        name = f"{link}-{label}-{workers}w-{len(result['one']) if workers == 1 else 0}{tag}"
        run_dir = store_dir(env["BEGAN_TESTBED_STORE"], f"{stamp}/{name}-{uuid.uuid4().hex[:6]}")
        before, started = load(), time.time()
        lines = train(env, run_dir, args, workers, compression, os.path.join(out_dir, f"{name}.log"))
        summary = {**summarise(lines), "load_before": before, "load_after": load(),
                   "wall_s": round(time.time() - started, 1)}
        print(f"  {name}: step {summary['step_s']:.2f} s, comm {summary['comm_bytes'] / 1e6:.2f} MB/step, "
              f"wait {summary['comm_wait_s']:.3f} s (max {summary['comm_wait_max_s']:.3f}), load {before} -> "
              f"{summary['load_after']}", flush=True)
        return summary

    result["one"].append(one_run(1, "none"))
    factor = factor or result["one"][0]["step_s"] / GPU_STEP_S
    rate = f"{LINKS_GBIT[link] * 1000 / factor:.0f}mbit"
    result.update(factor=factor, rate=rate)
    print(f"{link}: factor {factor:.1f} -> {LINKS_GBIT[link]:g} Gbit/s / factor = {rate}", flush=True)
    if args.control:  # the wait the machine's load and the ranks' imbalance cause by themselves
        result["uncapped"] = one_run(2, "none", "-uncapped")
    limit(rate, env)
    try:
        half = (len(args.compressions) + 1) // 2
        for i, compression in enumerate(args.compressions):
            if i == half and args.baselines >= 3:
                result["one"].append(one_run(1, "none"))
            result["two"][compression] = one_run(2, compression)
    finally:
        limit("off", env)
    result["one"].append(one_run(1, "none"))
    return result, factor


def table(results: list[dict]) -> str:
    rows = [f"{'link':<11} {'rate':>8} {'compression':<11} {'1w step s':>9} {'2w step s':>9} {'scaling':>7} "
            f"{'MB/step':>8} {'wait s':>7} {'wait max':>8} {'wait %':>6} {'1-wait':>6}  load before..after"]
    for res in results:
        one = statistics.median(run["step_s"] for run in res["one"])
        spread = [round(run["step_s"], 2) for run in res["one"]]
        rows.append(f"{res['link']:<11} {res['rate']:>8} 1 worker    {one:>9.2f}  (runs {spread}, factor "
                    f"{res['factor']:.1f})")
        runs = [(res["rate"], compression, two) for compression, two in res["two"].items()]
        if "uncapped" in res:
            runs.insert(0, ("off", "none", res["uncapped"]))
        for rate, compression, two in runs:
            share = two["comm_wait_s"] / two["step_s"]
            rows.append(
                f"{res['link']:<11} {rate:>8} {compression:<11} {one:>9.2f} {two['step_s']:>9.2f} "
                f"{one / two['step_s']:>7.0%} {two['comm_bytes'] / 1e6:>8.2f} {two['comm_wait_s']:>7.3f} "
                f"{two['comm_wait_max_s']:>8.3f} {share:>6.1%} {1 - share:>6.0%}  "
                f"{two['load_before']} .. {two['load_after']}")
    return "\n".join(rows)


def projection(results: list[dict]) -> str:
    """Efficiency at 2, 8 and 64 GPU nodes from the measured bytes per step and overlap.

    Each node computes a step in GPU_STEP_S; a ring all-reduce of B bytes over N nodes sends
    2 (N-1)/N B per node (the ring's bandwidth term) and takes 2 log2 N latencies per call (a
    tree's, as NCCL uses for small messages; a ring's 2 (N-1) would cost PowerSGD's many small
    calls 75 ms a step at 64 nodes on the commodity link). The hidden part is what the 2-host
    run hid behind its backward computation, assumed to stay the same at N nodes: its emulated
    transfer time minus the wait the link caused (the measured wait less the wait of the uncapped
    control run, the machine's load and the ranks' imbalance; all of the wait without one), scaled
    down by the factor. The exposed rest of the all-reduce adds to the step."""
    rows = [f"{'link':<11} {'compression':<11} {'MB/step':>8} {'calls':>5} {'link wait s':>11} {'hidden ms':>9} "
            + " ".join(f"{f'{n} nodes':>9}" for n in NODES)]
    for res in results:
        rate_bits = LINKS_GBIT[res["link"]] * 1e9
        control = res.get("uncapped", {}).get("comm_wait_s", 0.0)
        for compression, two in res["two"].items():
            transfer2 = two["comm_bytes"] * 8 / (rate_bits / res["factor"])  # emulated seconds at 2 hosts
            link_wait = max(0.0, two["comm_wait_s"] - control)
            hidden = max(0.0, transfer2 - link_wait) / res["factor"]  # real seconds
            calls = CALLS[compression.startswith("powersgd")]
            cells = []
            for n in NODES:
                latency = 2 * math.ceil(math.log2(n)) * calls * LATENCY_S[res["link"]]
                comm = 2 * (n - 1) / n * two["comm_bytes"] * 8 / rate_bits + latency
                exposed = max(0.0, comm - hidden)
                cells.append(f"{GPU_STEP_S / (GPU_STEP_S + exposed):>9.0%}")
            rows.append(f"{res['link']:<11} {compression:<11} {two['comm_bytes'] / 1e6:>8.2f} {calls:>5} "
                        f"{link_wait:>11.3f} {hidden * 1e3:>9.2f} " + " ".join(cells))
    links = ", ".join(f"{k} {v:g} Gbit/s" for k, v in LINKS_GBIT.items())
    assumptions = [
        f"GPU step {GPU_STEP_S * 1e3:g} ms (64 px, batch 16 per GPU); links {links}",
        "all-reduce: 2 (N-1)/N x bytes per node per step (ring), 2 log2 N latency hops per call (tree); latency "
        + ", ".join(f"{k} {v * 1e6:g} us" for k, v in LATENCY_S.items()),
        f"all-reduce calls per step: {CALLS[False]} (G's and D's 2 buckets each: DDP's 1 MB first bucket, then 25 MB),"
        f" {CALLS[True]} with PowerSGD (per bucket: its uncompressed layers, P and Q)",
        "hidden: the 2-host run's emulated transfer time minus the link's wait (wait - uncapped control's), / factor;"
        " kept at N nodes",
        "compute per node unchanged (weak scaling, batch 16 per GPU); no stragglers",
    ]
    return "\n".join(rows + ["assumptions:"] + [f"  - {line}" for line in assumptions])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--up", action="store_true", help="bring up a 3-host testbed for this run, down after")
    parser.add_argument("--links", nargs="+", default=list(LINKS_GBIT), choices=list(LINKS_GBIT))
    parser.add_argument("--steps", type=int, default=12, help="steps per run")
    parser.add_argument("--log-every", type=int, default=4, help="steps per log interval (the first is left out)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--compressions", nargs="+", default=["none", "fp16", "bf16", "powersgd"],
                        help="run.grad_compression values; powersgd:R for rank R; VALUE@MB for run.bucket_cap_mb=MB")
    parser.add_argument("--powersgd-rank", type=int, default=1, help="rank of a plain `powersgd`")
    parser.add_argument("--factor", type=float, help="step time here / 12 ms (default: the first 1-worker run's)")
    parser.add_argument("--baselines", type=int, choices=(2, 3), default=3,
                        help="1-worker runs per link: before and after the 2-worker runs (2), and between (3)")
    parser.add_argument("--control", action="store_true",
                        help="also 2 workers, plain DDP, link uncapped: the wait without the link's part")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--project", nargs="+", metavar="RESULT_JSON", help="only print tables of earlier results")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    args = parser.parse_args()

    if args.project:
        results = [res for path in args.project for res in json.load(open(path))["results"]]
        print(table(results) + "\n\nprojection:\n" + projection(results))
        return 0
    print(f"plan: links {', '.join(args.links)}; per link 1 worker (factor = its step time / "
          f"{GPU_STEP_S * 1e3:g} ms), `cluster/testbed limit host1|host2 RATE`, then 2 workers with "
          f"{', '.join(args.compressions)} and 1 worker {'between and ' if args.baselines == 3 else ''}after; "
          f"{args.steps} steps at {args.size} px")
    preflight(args)
    if args.dry_run:
        return 0
    base_env = {**os.environ, "PYTHON": sys.executable,
                "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    if args.up:
        testbed("up", "3", "--owner", str(os.getpid()), timeout=600, env=base_env)
    try:
        status = testbed_status()
        needs = missing(status)
        for need in needs:
            print(f"comm_speed: needs {need}")
        if needs:
            return 0
        env = {**base_env, **status["env"]}
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        os.environ.update({k: v for k, v in status["env"].items() if k.startswith("AWS_")})  # pyarrow's S3
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_dir = os.path.abspath(os.path.join("runs", f"comm_speed-{stamp}"))  # runs/: ignored by git
        os.makedirs(out_dir, exist_ok=True)
        print(f"logs in {out_dir}; load average {load()}", flush=True)
        results, factor = [], args.factor
        for link in args.links:
            res, factor = run_link(link, args, env, out_dir, stamp, factor)
            results.append(res)
    finally:
        if args.up:
            testbed("down", timeout=300, check=False, env=base_env)
    report = table(results) + "\n\nprojection:\n" + projection(results)
    print("\n" + report)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"results": results, "args": vars(args), "load_end": load()}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
