"""What each membership change of an elastic run costs, on cluster/testbed (docs/design.md, "Elastic runs").

    cluster/testbed up 4                # host0 (the head) and host1..host3, one training worker each
    python benchmarks/elastic.py [--steps 60] [--every 10] [--at 15] [--drain-s 10]

Trains the same run (a small BEGAN, 3 workers at most, run.dir on the testbed's store) once per row:
  fixed    run.workers=3, nothing happens: the baseline, measured in the same invocation
  shrink   run.workers=3 run.min_workers=1; host3 killed at step --at (`cluster/testbed kill`)
  grow     host3 killed before the start, so the run starts with 2; host3 joins at step --at
  preempt  host3 drained at step --at (`ray drain-node ... --reason DRAIN_NODE_REASON_PREEMPTION
           --deadline-remaining-seconds --drain-s`), then killed at the deadline, as a spot reclaim
and prints one table: the wall seconds from `ray job submit` to the end, the difference to the
fixed run, the longest pause between two consecutive steps (the membership change itself: failure
detection, the new worker group's start, its checkpoint load), the steps done twice (those after
the checkpoint the new group resumed from), and the world sizes in order.

Steps are timed where the benchmark reads them: rank 0's `step N/M` lines as the job's output
streams in (train.log_every=1). A 2-core machine hosts every host, so a 2-worker phase is not
slower per step than a 3-worker one, and other work on the machine inflates every figure: compare
rows of one invocation only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTBED = os.path.join(REPO, "cluster", "testbed")
HOST = "host3"
MODEL = ["model.image_size=16", "model.filters=8", "model.nz=8", "model.nh=8", "model.convs_per_scale=1",
         "data.glyphs=64", "train.batch_size=6", "train.log_every=1", "train.sample_every=100000"]  # fmt: skip
STEP = re.compile(r"step (\d+)/(\d+):")
RESUMED = re.compile(r"resumed from \S+ at step (\d+)")
WORLD = re.compile(r" on \S+ x (\d+);")
WAIT_S = 1800  # bound on one run


def testbed(*args: str, timeout: float = 300) -> str:
    done = subprocess.run([TESTBED, *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"cluster/testbed {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def status() -> dict:
    return json.loads(testbed("status"))


def host_alive(name: str) -> bool:
    host = status()["hosts"].get(name)
    return bool(host and host["alive"])


def node_id(ip: str) -> str:
    nodes = json.loads(testbed("exec", "host0", "--", "ray", "list", "nodes", "--format", "json", "--limit", "1000"))
    return next(n["node_id"] for n in nodes if n["node_ip"] == ip and n["state"] == "ALIVE")


class Job:
    """One `began-dist train` submitted to the testbed; its output lines, timed as they arrive."""

    def __init__(self, env: dict, overrides: list[str]):
        self.lines: list[tuple[float, str]] = []
        self.started = time.monotonic()
        command = ["ray", "job", "submit", "--submission-id", f"bench-{uuid.uuid4().hex[:8]}", "--",
                   "began-dist", "train", *overrides]  # fmt: skip
        self.process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)  # fmt: skip
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.rstrip()))

    def steps(self) -> list[tuple[float, int]]:
        return [(t, int(m.group(1))) for t, line in self.lines if (m := STEP.search(line))]

    def wait_step(self, step: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while not any(s >= step for _, s in self.steps()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the run ended before step {step}:\n" + self.tail())
            time.sleep(0.5)

    def finish(self) -> float:
        code = self.process.wait(timeout=WAIT_S)
        self.reader.join(60)
        if code:
            raise RuntimeError(f"the run failed (exit {code}):\n" + self.tail())
        return time.monotonic() - self.started

    def tail(self) -> str:
        return "\n".join(line for _, line in self.lines[-40:])


def measure(job: Job, wall: float) -> dict:
    """Wall seconds, the longest pause between consecutive step lines, steps done twice, world sizes."""
    steps = job.steps()
    gaps = [b[0] - a[0] for a, b in zip(steps, steps[1:])]
    reached, redone = 0, 0
    for _, line in job.lines:
        if m := RESUMED.search(line):
            redone += max(0, reached - int(m.group(1)))
        elif m := STEP.search(line):
            reached = max(reached, int(m.group(1)))
    worlds: list[int] = []
    for _, line in job.lines:
        if (m := WORLD.search(line)) and (not worlds or worlds[-1] != int(m.group(1))):
            worlds.append(int(m.group(1)))
    return {"wall": wall, "stall": max(gaps, default=0.0), "redone": redone, "worlds": worlds}


def scenario(name: str, env: dict, args, common: list[str]) -> dict:
    if name == "grow":
        if host_alive(HOST):
            testbed("kill", HOST)
            time.sleep(25)  # Ray declares the node dead (cluster/README.md: 10-20 s on the testbed)
    elif not host_alive(HOST):
        testbed("join", HOST)
    elastic = [] if name == "fixed" else ["run.min_workers=1", f"run.resize_interval_s={args.resize_s}"]
    path, _, query = env["BEGAN_TESTBED_STORE"].partition("?")  # a sub-path goes before the ?query
    run_dir = f"{path}/bench-elastic/{name}-{uuid.uuid4().hex[:6]}" + (f"?{query}" if query else "")
    job = Job(env, [*common, *elastic, f"run.dir={run_dir}"])
    if name != "fixed":
        job.wait_step(args.at)
    if name == "shrink":
        testbed("kill", HOST)
    elif name == "grow":
        testbed("join", HOST)
    elif name == "preempt":
        ip = status()["hosts"][HOST]["ip"]
        testbed("exec", "host0", "--", "ray", "drain-node", "--node-id", node_id(ip), "--reason",
                "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot reclaim (benchmark)",
                "--deadline-remaining-seconds", str(args.drain_s))  # fmt: skip
        time.sleep(args.drain_s)
        testbed("kill", HOST)
    return measure(job, job.finish())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10, help="train.checkpoint_every")
    parser.add_argument("--at", type=int, default=15, help="the step at which the membership changes")
    parser.add_argument("--drain-s", type=int, default=10, help="preempt: the drain deadline, seconds")
    parser.add_argument("--resize-s", type=float, default=5.0, help="run.resize_interval_s")
    parser.add_argument("--only", default="fixed,shrink,grow,preempt", help="rows to run, comma-separated")
    args = parser.parse_args(argv)
    try:
        state = status()
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"needs a testbed: `cluster/testbed up 4` (root): {error}", file=sys.stderr)
        return 2
    if len(state["hosts"]) < 4 and HOST not in state["hosts"]:
        print(f"needs {HOST}: `cluster/testbed up 4`, or `cluster/testbed join {HOST}`", file=sys.stderr)
        return 2
    env = dict(state["env"])
    common = [*MODEL, f"train.steps={args.steps}", f"train.checkpoint_every={args.every}", "--workers", "3",
              "run.worker_resources.train_slot=1", "run.max_failures=0"]  # fmt: skip
    rows = {}
    for name in args.only.split(","):
        print(f"{name} ...", file=sys.stderr, flush=True)
        rows[name] = scenario(name, env, args, common)
        print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)  # kept if a later row fails
    if not host_alive(HOST):
        testbed("join", HOST)
    base = rows.get("fixed", {}).get("wall")
    print(f"{args.steps} steps, checkpoint every {args.every}, change at step {args.at}"
          + (f", drain deadline {args.drain_s} s" if "preempt" in rows else ""))
    print(f"{'change':<9} {'wall s':>7} {'vs fixed s':>10} {'longest pause s':>15} {'redone steps':>12}  world sizes")
    for name, row in rows.items():
        extra = f"{row['wall'] - base:+.0f}" if base is not None else "-"
        worlds = " -> ".join(map(str, row["worlds"]))
        print(f"{name:<9} {row['wall']:>7.0f} {extra:>10} {row['stall']:>15.1f} {row['redone']:>12}  {worlds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
