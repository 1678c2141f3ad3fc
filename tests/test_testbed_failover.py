"""Failures on separate hosts (cluster/testbed, root): a host killed, the head killed, a host cut off
for longer or shorter than the collective timeout and Ray's health check, links capped. Each run
is compared with one undisturbed run (the module's `reference`): same steps, bitwise the same weights.
With BEGAN_TESTBED_DUMP=DIR each job's output, timed and with the test's own events, is kept in DIR.
"""

import json
import os
import subprocess
import threading
import time
import uuid

import pytest
import torch
from helpers import TINY
from testbed_support import CLI

from began_dist import storage
from began_dist.train import state as ckpt

pytestmark = pytest.mark.testbed

STEPS, EVERY = 12, 4  # checkpoints at 4, 8, 12 (TINY's cadence); failures strike after the first
# Every run asks for one train_slot per worker (no training worker on the head); a restart may be
# placed at most twice more; collectives give up on a silent peer after COLLECTIVE_S (run.collective_timeout_s).
COLLECTIVE_S = 10
SHORT_S, LONG_S = 3, 25  # partitions well within, and beyond, both COLLECTIVE_S and Ray's health check (10-20 s)
RUN = ["--workers", "2", *TINY, f"train.steps={STEPS}", f"train.checkpoint_every={EVERY}",
       "run.worker_resources.train_slot=1", "run.max_failures=2", "run.controller_failure_limit=3",
       f"run.collective_timeout_s={COLLECTIVE_S}"]  # fmt: skip
RESTART = "worker group restart"  # what log.txt says when Ray Train restarts the worker group
JOB_S = 300  # bound on one run


@pytest.fixture(scope="module")
def store(testbed_client):
    """This process reads the store as a client on the machine (conftest.testbed_client)."""
    return testbed_client


def new_run_dir(env: dict, name: str) -> str:
    return storage.join(env["BEGAN_TESTBED_STORE"], f"runs/{name}-{uuid.uuid4().hex[:8]}")


class Job:
    """`ray job submit -- began-dist ARGS` from the machine to host0's job API, in the background; its
    output lines are collected with their times (a failure message shows when what happened)."""

    def __init__(self, env: dict, *args: str):
        self.started = time.monotonic()
        self.proc = subprocess.Popen(["ray", "job", "submit", "--", "began-dist", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.started, line.rstrip("\n")))

    def output(self, last: int = 60) -> str:
        return "\n".join(f"{t:6.1f} {line}" for t, line in self.lines[-last:])

    def note(self, event: str) -> None:
        """A line of the test's own among the job's (when a host was killed, ...)."""
        self.lines.append((time.monotonic() - self.started, f"TEST: {event}"))

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=60)

    def finish(self, timeout: float = JOB_S) -> str:
        """The job's output once `ray job submit` returns; the job must have succeeded."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"the run did not finish in {timeout} s:\n{self.output()}")
        finally:
            self.reader.join(timeout=10)
            if os.environ.get("BEGAN_TESTBED_DUMP"):
                with open(os.path.join(os.environ["BEGAN_TESTBED_DUMP"], f"job-{uuid.uuid4().hex[:6]}.txt"), "w") as f:
                    f.write(self.output(10**6))
        assert self.proc.returncode == 0, self.output()
        return "\n".join(line for _, line in self.lines)


def wait_for_checkpoint(run_dir: str, step: int, job: Job, timeout: float = JOB_S) -> None:
    """Poll the store until the checkpoint of `step` is there (complete: objects appear whole)."""
    deadline = time.monotonic() + timeout
    while step not in [found for found, _ in ckpt.list_checkpoints(run_dir)]:
        if not job.running():
            pytest.fail(f"the run ended before its step-{step} checkpoint:\n{job.output()}")
        assert time.monotonic() < deadline, f"no step-{step} checkpoint after {timeout} s"
        time.sleep(0.1)
    job.note(f"step-{step} checkpoint seen")


def stats(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_text(storage.join(run_dir, "stats.jsonl")).splitlines()]


def final_state(run_dir: str) -> dict:
    found = ckpt.list_checkpoints(run_dir)
    assert found and found[-1][0] == STEPS, found
    return ckpt.load_checkpoint(found[-1][1])


def assert_same_run(run_dir: str, reference: dict) -> None:
    """The run reached STEPS, logged every log step once, and its final weights and k_t are bitwise the reference's."""
    every = int(dict(item.split("=") for item in TINY)["train.log_every"])
    assert [line["step"] for line in stats(run_dir)] == list(range(every, STEPS + 1, every))
    state = final_state(run_dir)
    for net in ("G", "D"):
        for name, tensor in reference["state"][net].items():
            assert torch.equal(tensor, state[net][name]), (net, name)
    assert torch.equal(torch.as_tensor(state["k_t"]), torch.as_tensor(reference["state"]["k_t"]))


def log_text(run_dir: str) -> str:
    return storage.read_text(storage.join(run_dir, "log.txt"))


HOLD = """
import json, sys, ray
from ray.util.placement_group import placement_group, remove_placement_group
ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
group = placement_group([{"CPU": 1, "train_slot": 1, f"node:{ip}": 0.001} for ip in json.loads(sys.argv[1])])
ray.get(group.ready(), timeout=120)
print("held", flush=True)
sys.stdin.read()
remove_placement_group(group)
"""
RUN_HOSTS = ("host1", "host2")  # where the runs' two workers start: every other host's training slot is held


class Hold:
    """The training slots of `hosts` held by a placement group (a process on host0) until `release`."""

    def __init__(self, testbed, hosts: list[str]):
        self.hold = None
        if not hosts:
            return
        known = testbed.hosts()
        ips = json.dumps([known[host]["ip"] for host in hosts])
        self.hold = subprocess.Popen([str(CLI), "exec", "host0", "--", "python", "-c", HOLD, ips], env=testbed.env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        line = self.hold.stdout.readline()
        if "held" not in line:
            self.release()
            pytest.fail(f"could not hold the training slots of {hosts}: {line}")

    def release(self) -> None:
        if self.hold is not None and self.hold.poll() is None:
            self.hold.stdin.close()
            try:
                self.hold.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.hold.kill()


def others(testbed, *kept: str) -> list[str]:
    """The live hosts with a training slot (all but host0) other than RUN_HOSTS and `kept`."""
    return [name for name, host in testbed.hosts().items()
            if host["alive"] and name not in ("host0", *RUN_HOSTS, *kept)]  # fmt: skip


class Spare:
    """host3, joined if missing, its training slot held until `release`, and every other extra host's held
    until `close`: so the run's two workers start on host1 and host2, and only host3 is free when one fails."""

    def __init__(self, testbed):
        if "host3" not in testbed.hosts():
            testbed.cli("join", timeout=300)
        self.extra = Hold(testbed, others(testbed, "host3"))
        self.spare = Hold(testbed, ["host3"])

    def release(self) -> None:
        self.spare.release()

    def close(self) -> None:
        self.spare.release()
        self.extra.release()


@pytest.fixture
def spare(testbed):
    held = Spare(testbed)
    yield held
    held.close()


@pytest.fixture(scope="module")
def reference(testbed_session, store):
    """One run with every link capped at 100 Mbit/s and host2 cut off for SHORT_S mid-run, well within
    the collective timeout and Ray's health-check window (10-20 s, cluster/README.md): neither changes a
    number, so the failure tests compare their final weights with this run's."""
    run_dir = new_run_dir(store, "reference")
    hosts = ("host0", *RUN_HOSTS)
    held = Hold(testbed_session, others(testbed_session))  # the workers on host1 and host2: host2 is cut off
    try:
        for host in hosts:
            testbed_session.cli("limit", host, "100mbit")
        started = time.monotonic()
        job = Job(store, "train", *RUN, f"run.dir={run_dir}")
        wait_for_checkpoint(run_dir, EVERY, job)
        cut = time.monotonic()
        testbed_session.cli("partition", "host2", str(SHORT_S), timeout=60)
        out = job.finish()
        seconds = time.monotonic() - started
    finally:
        held.release()
        for host in hosts:
            testbed_session.cli("limit", host, "off", check=False)
    return {"run_dir": run_dir, "out": out, "state": final_state(run_dir), "seconds": seconds, "cut": cut - started}


def test_links_capped_at_100mbit_the_run_finishes_and_reports_images_per_s(reference):
    lines = stats(reference["run_dir"])
    assert [line["step"] for line in lines][-1] == STEPS
    assert all(line["images_per_s"] > 0 and line["world_size"] == 2 for line in lines)
    assert "images/s" in reference["out"]  # the driver's console shows the speed
    print(f"capped run: {reference['seconds']:.0f} s; images/s {[round(x['images_per_s'], 1) for x in lines]}")


def test_a_short_partition_goes_on_without_a_restart(reference):
    """host2 cut off for SHORT_S after the first checkpoint: the collectives wait it out; nothing restarts."""
    log = log_text(reference["run_dir"])
    assert RESTART not in log and log.count("new run:") == 1 and "resumed from" not in log, log
    # the cut landed mid-run: one log interval after the first checkpoint waited through it
    lines = stats(reference["run_dir"])
    assert [line["step"] for line in lines] == list(range(2, STEPS + 1, 2))
    later = [line for line in lines if line["step"] > EVERY]
    assert min(line["images_per_s"] for line in later) < 2 * 4 / SHORT_S, later  # 2 steps x batch 4 in > SHORT_S s


def failed_and_restarted(run_dir: str, reference: dict, gone: str) -> None:
    """The run finished from its last checkpoint on host1 and host3 (host `gone` no longer in it),
    every step logged once, bitwise the reference's weights, and log.txt says the group restarted."""
    assert_same_run(run_dir, reference)
    log = log_text(run_dir)
    assert log.count("new run:") == 1 and f"{RESTART} 1 " in log, log
    restarted = log.split(RESTART, 1)[1].splitlines()[0]
    assert gone not in restarted and "198.18.0.11" in restarted and "198.18.0.13" in restarted, restarted
    assert "resumed from" in log.split(RESTART, 1)[0].rsplit("\n", 2)[-2], log


def test_kill_a_host_mid_run_the_group_restarts_on_the_spare(testbed, store, reference, spare):
    run_dir = new_run_dir(store, "kill-host2")
    job = Job(store, "train", *RUN, f"run.dir={run_dir}")
    wait_for_checkpoint(run_dir, EVERY, job)
    spare.release()
    testbed.cli("kill", "host2")
    job.note("host2 killed")
    job.finish()
    failed_and_restarted(run_dir, reference, "198.18.0.12")


def test_partition_longer_than_the_timeouts_restarts_the_group(testbed, store, reference, spare):
    """host2 cut off for longer than run.collective_timeout_s and Ray's health-check window: the
    collectives give up, Ray declares host2 dead, the group restarts on host1 and host3."""
    run_dir = new_run_dir(store, "partition")
    job = Job(store, "train", *RUN, f"run.dir={run_dir}")
    wait_for_checkpoint(run_dir, EVERY, job)
    spare.release()
    cut = subprocess.Popen([str(CLI), "partition", "host2", str(LONG_S)], env=testbed.env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)  # fmt: skip
    job.note("host2 cut off")
    try:
        job.finish()
        assert cut.wait(timeout=LONG_S + 60) == 0, cut.stdout.read()
    finally:
        cut.kill()
    failed_and_restarted(run_dir, reference, "198.18.0.12")


def test_kill_the_head_mid_run_resume_on_a_fresh_head(testbed, store, reference):
    """host0 (head, job API, driver, Train controller) killed after the first checkpoint; the store
    survives: `train --resume s3://...` on a fresh head continues to the same final weights."""
    run_dir = new_run_dir(store, "kill-host0")
    job = Job(store, "train", *RUN, f"run.dir={run_dir}")
    wait_for_checkpoint(run_dir, EVERY, job)
    testbed.cli("kill", "host0")
    job.note("host0 killed")
    job.stop()  # its job API is gone with host0
    # a fresh head; the hosts' Ray (and the old run's workers with it) restarts and joins it
    testbed.cli("join", "host0", timeout=300)
    assert STEPS not in [step for step, _ in ckpt.list_checkpoints(run_dir)]  # the kill came mid-run
    Job(store, "train", "--resume", run_dir).finish()
    assert_same_run(run_dir, reference)
    log = log_text(run_dir)
    assert log.count("new run:") == 1 and "resumed from" in log and RESTART not in log, log
