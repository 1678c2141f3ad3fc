"""Stops under Ray Train (began_dist/train/stops.py, began_dist/distributed/stops.py).

On the session's one-host cluster: SIGTERM to one worker (the run goes on), Ctrl-C to the driver
and `ray job stop` (exit 130 / STOPPED with a checkpoint, then `--resume`), each ending bitwise
at the weights of an undisturbed run. On the testbed (tests/test_testbed_stops.py): a drained-then-killed host.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import torch
from helpers import TINY

from began_dist.cli import main
from began_dist.config import load_config, resolve_run_dir
from began_dist.train import state as ckpt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
STEPS = 40
# Two workers on two nodes; a checkpoint every 10 steps (the tests wait for the first one before
# they disturb the run), a stop point every 2 steps, every step in stats.jsonl.
COMMON = [*TINY, "--workers", "2", "run.worker_resources.train_slot=1", "run.controller_failure_limit=1",
          f"train.steps={STEPS}", "train.log_every=1", "train.checkpoint_every=10", "train.sample_every=1000",
          "run.stop_check_every=2", "run.max_failures=2"]  # fmt: skip


def config(run_dir, *overrides):
    args = [item for item in COMMON if item != "--workers" and item != "2"]
    cfg = load_config(None, [*args, "run.workers=2", f"run.dir={run_dir}", *overrides])
    resolve_run_dir(cfg)
    return cfg


def wait_for(condition, what: str, timeout: float = 240, every: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def alive_pid(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stats_steps(run_dir) -> list[int]:
    with open(os.path.join(run_dir, "stats.jsonl")) as handle:
        return [json.loads(line)["step"] for line in handle]


def read_log(run_dir) -> str:
    with open(os.path.join(run_dir, "log.txt")) as handle:
        return handle.read()


def final_weights(run_dir) -> dict:
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(str(run_dir), STEPS))
    return {"G": state["G"], "D": state["D"], "k_t": torch.as_tensor(state["k_t"])}


def assert_bitwise(run_dir, reference) -> None:
    mine = final_weights(run_dir)
    for net in ("G", "D"):
        for name, tensor in reference[net].items():
            assert torch.equal(tensor, mine[net][name]), (net, name)
    assert torch.equal(reference["k_t"], mine["k_t"])


def job_submitted(command: list[str]):
    """The finished `ray job submit`, or None while the head's job agent is not up yet (a loaded machine)."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return None if "No available agent" in done.stdout + done.stderr else done


def resumed_steps(log: str) -> list[int]:
    return [int(step) for step in re.findall(r"resumed from \S+ at step (\d+)", log)]


def test_a_short_ray_job_stop_wait_is_named_at_start(capsys):
    from began_dist.distributed.stops import warn_job_stop_wait

    in_job = {"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}  # what Ray's job supervisor sets for the entrypoint
    warn_job_stop_wait(in_job)
    err = capsys.readouterr().err
    assert "3 s after its SIGTERM (RAY_JOB_STOP_WAIT_TIME_S)" in err and "--runtime-env-json" in err
    warn_job_stop_wait({**in_job, "RAY_JOB_STOP_WAIT_TIME_S": "120"})
    warn_job_stop_wait({})  # not a job: `ray job stop` does not apply
    assert capsys.readouterr().err == ""


@pytest.fixture(scope="session")
def undisturbed(ray_cluster, tmp_path_factory):
    """The final weights of the run the tests disturb, run undisturbed on the one-host cluster."""
    from began_dist.distributed.ray_train import run_on_ray

    run_dir = tmp_path_factory.mktemp("undisturbed") / "run"
    result = run_on_ray(config(run_dir))
    assert result.step == STEPS, result.message
    return final_weights(run_dir)


@pytest.mark.ray
@pytest.mark.slow
def test_sigterm_to_one_worker_saves_and_the_run_goes_on(ray_cluster, undisturbed, tmp_path):
    from ray.util.state import list_actors

    from began_dist.distributed.ray_train import run_on_ray

    run_dir = tmp_path / "worker"
    outcome = {}
    fit = threading.Thread(target=lambda: outcome.update(result=run_on_ray(config(run_dir))), daemon=True)
    fit.start()
    try:
        wait_for(lambda: ckpt.list_checkpoints(str(run_dir)), "the first checkpoint")
        alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
        workers = wait_for(lambda: [actor for actor in list_actors(ray_cluster.address, filters=alive, detail=True)
                                    if alive_pid(actor.pid)], "the workers")  # fmt: skip
        os.kill(workers[0].pid, signal.SIGTERM)  # as a node that shuts down sends it
    finally:
        fit.join(timeout=400)  # bounded; the run must not outlive the test
    assert not fit.is_alive(), "the run did not finish"
    assert outcome["result"].step == STEPS, outcome["result"].message
    log = read_log(run_dir)
    (saved,) = re.findall(r"SIGTERM to worker rank \d at step (\d+): checkpoint", log)
    assert resumed_steps(log) == [int(saved)]  # restarted from the checkpoint of the last completed step
    assert stats_steps(run_dir) == list(range(1, STEPS + 1))  # every step once: none redone, none skipped
    assert_bitwise(run_dir, undisturbed)


@pytest.mark.ray
@pytest.mark.slow
def test_ctrl_c_and_ray_job_stop_save_then_resume_bitwise(ray_cluster, undisturbed, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    run_dir = tmp_path / "driver"
    # Ctrl-C to the driver of `began-dist train --workers 2`
    driver = subprocess.Popen([os.path.join(BIN, "began-dist"), "train", *COMMON, "--address", ray_cluster.address,
                               f"run.dir={run_dir}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: ckpt.list_checkpoints(str(run_dir)) or driver.poll() is not None, "the first checkpoint")
        driver.send_signal(signal.SIGINT)
        output, _ = driver.communicate(timeout=180)
    finally:
        driver.kill()
    assert driver.returncode == 130, output[-3000:]
    (first,) = [int(step) for step in re.findall(r"interrupted at step (\d+): checkpoint", read_log(run_dir))]
    assert 10 <= first < STEPS and ckpt.list_checkpoints(str(run_dir))[-1][0] == first

    # `ray job stop` of the resumed run (submitted to the cluster's job API): SIGTERM to its driver
    job_id = f"stop-{uuid.uuid4().hex[:8]}"
    ray = os.path.join(BIN, "ray")
    address = ["--address", ray_cluster.dashboard_url]
    submit = [ray, "job", "submit", *address, "--submission-id", job_id, "--no-wait", "--working-dir", REPO,
              # more than Ray's 3 s between SIGTERM and SIGKILL, for the checkpoint (docs/design.md)
              "--runtime-env-json", json.dumps({"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "120"}}),
              "--", "began-dist", "train", "--resume", str(run_dir)]  # fmt: skip
    submitted = wait_for(lambda: job_submitted(submit), "the job API's agent", timeout=120, every=2)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    try:
        wait_for(lambda: ckpt.list_checkpoints(str(run_dir))[-1][0] > first, "a checkpoint of the resumed run")
    finally:
        stop = subprocess.run([ray, "job", "stop", *address, job_id], capture_output=True, text=True, timeout=200)
    assert stop.returncode == 0, stop.stdout[-3000:] + stop.stderr[-3000:]
    assert JobSubmissionClient(ray_cluster.dashboard_url).get_job_status(job_id) == JobStatus.STOPPED
    log = read_log(run_dir)
    (second,) = [int(step) for step in re.findall(r"interrupted at step (\d+): checkpoint", log)][1:]
    assert first < second < STEPS and ckpt.list_checkpoints(str(run_dir))[-1][0] == second

    # --resume (same worker count, CPU) ends bitwise where the undisturbed run ended
    assert main(["train", "--resume", str(run_dir), "--address", ray_cluster.address]) == 0
    assert resumed_steps(read_log(run_dir)) == [first, second]
    assert stats_steps(run_dir) == list(range(1, STEPS + 1))
    assert_bitwise(run_dir, undisturbed)


NOTICE = re.compile(r"step (\d+): drain notice for node \w+ .*: just-in-time checkpoint (\S+)")


def assert_no_step_before_the_notice_redone(log: str, notice, stats: list[int], steps: int) -> None:
    seen, saved = int(notice.group(1)), notice.group(2)
    assert f"/checkpoints/step-{seen:08d}.pt" in saved  # the checkpoint of the step where the notice came
    (resumed,) = resumed_steps(log)
    assert seen <= resumed < steps  # the restart went on from there or later: no step before it redone
    assert stats == list(range(1, steps + 1))  # every step once


@pytest.mark.ray
@pytest.mark.slow
def test_drained_then_removed_node_resumes_from_the_just_in_time_checkpoint(ray_cluster, tmp_path, monkeypatch):
    """A spot reclaim on the one-host cluster: Ray's drain notice for the node of a worker, then the node
    is gone; the spare node takes over after the deadline."""
    from ray.util.state import list_actors

    from began_dist.distributed.ray_train import run_on_ray

    monkeypatch.setenv("RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S", "1")  # Ray's watcher polls every 5 s
    run_dir, steps = tmp_path / "drained", 60
    outcome = {}
    fit = threading.Thread(target=lambda: outcome.update(result=run_on_ray(config(run_dir, f"train.steps={steps}"))),
                           daemon=True)  # fmt: skip
    fit.start()
    try:
        wait_for(lambda: ckpt.list_checkpoints(str(run_dir)), "the first checkpoint")
        alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
        node_id = list_actors(ray_cluster.address, filters=alive)[-1].node_id
        drain = subprocess.run([os.path.join(BIN, "ray"), "drain-node", "--address", ray_cluster.address, "--node-id",
                                node_id, "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot reclaim",
                                "--deadline-remaining-seconds", "20"], capture_output=True, text=True, timeout=120)
        assert drain.returncode == 0, drain.stdout + drain.stderr
        notice = wait_for(lambda: NOTICE.search(read_log(run_dir)), "the just-in-time checkpoint", every=0.5)
        victim = next(node for node in ray_cluster.training_nodes if node.node_id == node_id)
        ray_cluster.remove_node(victim, allow_graceful=False)
        ray_cluster.training_nodes.remove(victim)
    finally:
        fit.join(timeout=400)
        # The next tests get the cluster's three slots back, also when this one failed.
        while len(ray_cluster.training_nodes) < 3:
            ray_cluster.training_nodes.append(ray_cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1",
                                                                   resources={"train_slot": 1}))
        ray_cluster.wait_for_nodes()
    assert not fit.is_alive() and outcome["result"].step == steps, outcome.get("result")
    assert_no_step_before_the_notice_redone(read_log(run_dir), notice, stats_steps(run_dir), steps)
