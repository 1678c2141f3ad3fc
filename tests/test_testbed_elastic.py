"""An elastic run on cluster/testbed: run.workers=3 run.min_workers=1 follows host3 leaving and coming back.

It runs after tests/test_testbed.py (file order), on the session testbed, with host3 joined if missing.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import pytest
from helpers import TINY

pytestmark = pytest.mark.testbed

HOST3_IP = "198.18.0.13"
STEPS, CHECKPOINT_EVERY = 80, 5
# While host3 is away and comes back, host1's link is capped so a fast machine cannot finish the run
# first: about 130 KB of gradients per step cross it (tests/helpers.py TINY: 24k parameters), so
# 1 mbit/s makes a step take about a second. The cap goes once the run has grown back.
PACE = "1mbit"


def read_stats(run_dir: str) -> list[dict]:
    """RUN_DIR/stats.jsonl as uploaded so far (an object-store run directory gets it at each checkpoint)."""
    from began_dist import storage

    try:
        text = storage.read_text(storage.join(run_dir, "stats.jsonl"))
    except (OSError, storage.StorageError):
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def worlds(lines: list[dict]) -> list[int]:
    """The worker counts of successive steps, runs of one count collapsed: [3, 2, 3]."""
    seen: list[int] = []
    for line in lines:
        if not seen or seen[-1] != line["world_size"]:
            seen.append(line["world_size"])
    return seen


def wait_for(job, log, run_dir, predicate, what: str, limit: float = 300) -> list[dict]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        lines = read_stats(run_dir)
        if predicate(lines):
            return lines
        assert job.poll() is None, f"the run ended while waiting for {what}:\n{log.read_text()[-4000:]}"
        time.sleep(2)
    shown = [(line["step"], line["world_size"]) for line in read_stats(run_dir)][-8:]
    raise AssertionError(f"no {what} within {limit:.0f} s; last (step, world_size): {shown}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def test_elastic_run_shrinks_when_a_host_dies_and_grows_when_it_joins(testbed, tmp_path, monkeypatch):
    """3 workers -> host3 killed -> 2 workers -> host3 joins -> 3 workers; the run ends with every step once,
    each step's batch_digest that of a fixed 3-worker run, each resize in log.txt with its cause, and no
    failure counted (run.max_failures=0)."""
    from began_dist import storage
    from began_dist.train import state as ckpt

    host3 = testbed.hosts().get("host3")
    if not host3 or not host3["alive"]:
        testbed.cli("join", "host3", timeout=300)
    for name, host in testbed.hosts().items():  # exactly host1..host3 offer slots: host3 leaving must shrink
        if host["alive"] and name not in ("host0", "host1", "host2", "host3"):
            testbed.cli("kill", name)
    env = testbed.client_env()
    for key in [key for key in env if key.startswith("AWS_")]:
        monkeypatch.setenv(key, env[key])  # this process reads the run directory on the testbed's store
    run_dir = storage.join(env["BEGAN_TESTBED_STORE"], f"runs/elastic-{uuid.uuid4().hex[:8]}")
    common = [*TINY, "train.batch_size=6", f"train.steps={STEPS}", "train.log_every=1",
              f"train.checkpoint_every={CHECKPOINT_EVERY}", "train.sample_every=1000"]  # fmt: skip
    began_dist = os.path.join(os.path.dirname(testbed.env["PYTHON"]), "began-dist")

    # the reference: a fixed 3-worker run on a one-host cluster of its own (its own RAY_TMPDIR), niced
    # below the testbed's hosts, meanwhile
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    local_env = {key: value for key, value in testbed.env.items() if key != "RAY_ADDRESS"}
    reference_dir = tmp_path / "fixed"
    reference_log = open(tmp_path / "fixed.log", "w")
    reference = subprocess.Popen(
        ["nice", "-n", "10", began_dist, "train", *common, "--workers", "3", "run.cpus_per_worker=0.5",
         f"run.dir={reference_dir}"], env={**local_env, "RAY_TMPDIR": ray_tmp}, stdout=reference_log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip

    job_id = f"elastic-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "job.log"
    job = subprocess.Popen(
        ["ray", "job", "submit", "--submission-id", job_id, "--", "began-dist", "train", *common,
         "--workers", "3", "run.min_workers=1", "run.resize_interval_s=5", "run.max_failures=0",
         "run.worker_resources.train_slot=1", f"run.dir={run_dir}"],
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    finished = False
    try:
        started = time.monotonic()
        phases = []  # (what, seconds since submission): printed for the record

        def reached(what: str) -> None:
            phases.append(f"{what} {time.monotonic() - started:.0f} s")

        wait_for(job, log, run_dir, lambda s: any(x["world_size"] == 3 and x["step"] >= CHECKPOINT_EVERY for x in s),
                 "checkpointed step with 3 workers")  # fmt: skip
        reached("3 workers")
        testbed.cli("limit", "host1", PACE)
        testbed.cli("kill", "host3")
        reached("host3 killed")
        wait_for(job, log, run_dir, lambda s: worlds(s)[-1:] == [2] and s[-1]["step"] % CHECKPOINT_EVERY == 0,
                 "checkpointed step with 2 workers")  # fmt: skip
        reached("2 workers")
        testbed.cli("join", "host3", timeout=300)
        reached("host3 joined")
        wait_for(job, log, run_dir, lambda s: worlds(s) == [3, 2, 3], "growth back to 3 workers")
        reached("3 workers again")
        testbed.cli("limit", "host1", "off")
        assert job.wait(timeout=600) == 0, log.read_text()[-4000:]
        reached("done")
        assert reference.wait(timeout=600) == 0, (tmp_path / "fixed.log").read_text()[-4000:]
        finished = True
    finally:
        if not finished:  # the job outlives its client: stop it before the next test uses the testbed
            subprocess.run(["ray", "job", "stop", job_id], env=env, capture_output=True, timeout=120)
        stop(job)
        stop(reference)  # Ctrl-C first: the reference's driver then stops the one-host cluster it started
        reference_log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)

    lines = read_stats(run_dir)
    assert [line["step"] for line in lines] == list(range(1, STEPS + 1))  # every step once
    assert worlds(lines) == [3, 2, 3]
    fixed = [json.loads(line) for line in (reference_dir / "stats.jsonl").read_text().splitlines()]
    assert {line["world_size"] for line in fixed} == {3}
    assert [line["batch_digest"] for line in lines] == [line["batch_digest"] for line in fixed]
    assert [step for step, _ in ckpt.list_checkpoints(run_dir)][-1] == STEPS
    text = storage.read_text(storage.join(run_dir, "log.txt"))
    assert "elastic: started with 3 workers (range 1..3)" in text
    lost = f"elastic: world size 3 -> 2: node {HOST3_IP} left the cluster (not counted against run.max_failures)"
    assert lost in text
    assert f"elastic: world size 2 -> 3: room for 3 workers: node {HOST3_IP} joined" in text
    print("elastic run, seconds from submission:", ", ".join(phases))
