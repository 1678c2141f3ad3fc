"""A spot reclaim on the testbed: Ray's drain notice for a worker's host, then the host is killed
(`cluster/testbed kill`); the run resumes from the just-in-time checkpoint (docs/design.md, "Stops and
preemption"). Beside the other testbed tests, after test_testbed.py's, which count on a fresh testbed."""

import json
import subprocess
import uuid

import pytest
from test_stops import COMMON, NOTICE, assert_no_step_before_the_notice_redone, wait_for

from began_dist.train import state as ckpt


def alive_slot_hosts(testbed) -> dict:
    """{ip: host name} of the live hosts that offer a `train_slot` (every host but host0)."""
    return {host["ip"]: name for name, host in testbed.hosts().items() if host["alive"] and name != "host0"}


@pytest.mark.testbed
@pytest.mark.slow
def test_drained_then_killed_host_resumes_from_the_just_in_time_checkpoint(testbed):
    """A spot reclaim: Ray's drain notice (`ray drain-node ... PREEMPTION`), then the host dies. The run
    writes a checkpoint at the step the notice was seen, Ray restarts on the spare host after the
    deadline, and no step before the notice is redone."""
    from began_dist import storage

    if len(alive_slot_hosts(testbed)) < 3:
        testbed.cli("join", timeout=300)  # spare capacity for the restart
    env = testbed.client_env()
    run_dir = storage.join(env["BEGAN_TESTBED_STORE"], f"runs/drain-{uuid.uuid4().hex[:8]}")
    steps = 60
    overrides = [*COMMON, f"train.steps={steps}", f"run.dir={run_dir}"]
    job = subprocess.Popen(
        ["ray", "job", "submit", "--runtime-env-json",
         json.dumps({"env_vars": {"RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "1"}}),  # Ray's watcher: 5 s
         "--", "began-dist", "train", *overrides],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    store = {key: env[key] for key in env if key.startswith("AWS_")}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in store.items():
            patch.setenv(key, value)

        def log() -> str:
            path = storage.join(run_dir, "log.txt")
            return storage.read_text(path) if storage.isfile(path) else ""

        try:
            wait_for(lambda: ckpt.list_checkpoints(run_dir) or job.poll() is not None, "the first checkpoint",
                     timeout=400, every=1)  # fmt: skip
            listed = testbed.exec("host0", "ray", "list", "actors", "--format", "json", "--detail",
                                  "--filter", "class_name=RayTrainWorker", "--filter", "state=ALIVE")  # fmt: skip
            assert listed.returncode == 0, listed.stderr
            node = json.loads(listed.stdout)[-1]["node_id"]
            ip = next(n["node_ip"] for n in testbed.nodes() if n["node_id"] == node)
            drained = testbed.exec("host0", "ray", "drain-node", "--node-id", node, "--reason",
                                   "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot reclaim",
                                   "--deadline-remaining-seconds", "30")  # fmt: skip
            assert drained.returncode == 0, drained.stdout + drained.stderr
            notice = wait_for(lambda: NOTICE.search(log()), "the just-in-time checkpoint", timeout=120, every=1)
            testbed.cli("kill", alive_slot_hosts(testbed)[ip])
            output, _ = job.communicate(timeout=600)
        finally:
            job.kill()
        assert job.returncode == 0, output[-4000:]
        stats = storage.read_text(storage.join(run_dir, "stats.jsonl")).splitlines()
        stats = [json.loads(line)["step"] for line in stats]
        assert_no_step_before_the_notice_redone(log(), notice, stats, steps)
    last_group = output.rsplit("Started training worker group", 1)[-1]
    ranks = [line for line in last_group.splitlines() if "world_rank=" in line][:2]
    assert len(ranks) == 2 and not any(f"ip={ip}," in line for line in ranks)  # the new group left the host
