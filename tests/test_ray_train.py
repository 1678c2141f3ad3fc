"""Ray Train on a real cluster (the session's `ray_cluster`: a head and three 1-CPU worker nodes on 127.0.0.1)."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from helpers import TINY

from began_dist.cli import main
from began_dist.config import load_config, resolve_run_dir
from began_dist.train import state as ckpt

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# Each training worker takes a node's one `train_slot`, so two workers sit on two nodes.
ON_TWO_NODES = ["run.workers=2", "run.worker_resources.train_slot=1", "run.controller_failure_limit=1"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ray_config(run_dir, *overrides):
    cfg = load_config(None, [*TINY, *ON_TWO_NODES, f"run.dir={run_dir}", *overrides])
    resolve_run_dir(cfg)
    return cfg


def stats_steps(run_dir):
    with open(os.path.join(run_dir, "stats.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def test_two_nodes_identical_replicas_equivalent_to_one_worker_and_resume_with_one(ray_cluster, tmp_path, train_cli):
    from began_dist.distributed.ray_train import run_on_ray

    common = ["train.batch_size=16", "train.steps=4", "train.log_every=1", "train.checkpoint_every=4"]
    result = run_on_ray(ray_config(tmp_path / "ray", *common))
    assert result.step == 4
    digests, nodes = result.debug["replica_digests"], result.debug["worker_nodes"]
    assert len(digests) == 2 and digests[0] == digests[1]  # bit-identical G, D and k_t on both ranks
    assert len(set(nodes)) == 2  # two different Ray nodes

    # The data-parallelism rule: 2 workers x 8 images make the step 1 worker x 16 makes.
    code, local = train_cli(*common, run_dir=tmp_path / "local")
    assert code == 0
    for ray_line, local_line in zip(stats_steps(tmp_path / "ray"), stats_steps(local)):
        # the same global images and latents at every step, seen by 2 workers and by 1
        assert (ray_line["world_size"], local_line["world_size"]) == (2, 1)
        assert ray_line["batch_digest"] == local_line["batch_digest"], ray_line["step"]
        for key in ("L_x", "L_Gz", "L_D", "k_t", "M"):
            assert ray_line[key] == pytest.approx(local_line[key], rel=1e-4, abs=1e-6), (ray_line["step"], key)
    ray_G = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path / "ray")))["G"]
    local_G = ckpt.load_checkpoint(ckpt.latest_checkpoint(local))["G"]
    for name in local_G:
        torch.testing.assert_close(ray_G[name], local_G[name], rtol=1e-4, atol=1e-6)

    # Resume the 2-worker run with 1 worker: it continues at step 4 from the same image offset.
    code = main(["train", "--resume", str(tmp_path / "ray"), "--workers", "1", "train.steps=6"])
    assert code == 0
    assert [line["step"] for line in stats_steps(tmp_path / "ray")] == [1, 2, 3, 4, 5, 6]
    with open(tmp_path / "ray" / "log.txt") as handle:
        assert f"resumed from {tmp_path / 'ray' / 'checkpoints' / 'step-00000004.pt'}" in handle.read()
    # A checkpoint is stored once: RUN_DIR/checkpoints, no copy of it in Ray's storage (RUN_DIR/ray).
    assert not list((tmp_path / "ray" / "ray").rglob("*.pt"))
    position = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path / "ray")))["data"]
    assert (position["epoch"], position["offset"]) == (1, 2 * 16)  # 64 glyphs = 4 batches an epoch; 6 steps


def test_unplaceable_request_is_refused_at_once(ray_cluster, tmp_path, capsys):
    started = time.time()
    code = main(["train", *TINY, "train.batch_size=8", "--workers", "8", f"run.dir={tmp_path / 'run'}"])
    assert code == 2
    assert "cannot place 8 workers x 1.0 CPU" in capsys.readouterr().err
    code = main(["train", *TINY, "--workers", "1", "--gpus-per-worker", "1", f"run.dir={tmp_path / 'gpu'}"])
    assert code == 2
    assert "0 GPU" in capsys.readouterr().err
    # Four CPUs in all, but three `train_slot`s: every resource a worker asks for counts.
    code = main(["train", *TINY, "--workers", "4", "run.worker_resources.train_slot=1", f"run.dir={tmp_path / 's'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "1 train_slot" in err and "3 train_slot on 4 node(s), room for 3 of them" in err
    assert time.time() - started < 60


def test_non_finite_loss_on_ray_stops_cleanly_without_retry(ray_cluster, tmp_path, capsys):
    run_dir = tmp_path / "nan"
    code = main(["train", *TINY, *ON_TWO_NODES, "run.max_failures=2", "train.lr=1e10", "train.steps=20",
                 f"run.dir={run_dir}"])
    assert code == 3
    assert "non-finite loss at step 1" in capsys.readouterr().err
    with open(run_dir / "log.txt") as handle:
        assert handle.read().count("new run:") == 1  # not retried
    assert ckpt.list_checkpoints(str(run_dir)) == []


def test_ray_job_submit_through_the_cli(ray_cluster, tmp_path):
    run_dir = tmp_path / "job"
    command = [
        os.path.join(os.path.dirname(sys.executable), "ray"), "job", "submit",
        "--address", ray_cluster.dashboard_url, "--working-dir", REPO, "--",
        # simultaneous: its one-backward step under DDP; the run's replica digests must still agree.
        "began-dist", "train", *TINY, *ON_TWO_NODES, "train.steps=4", "train.update_order=simultaneous",
        f"run.dir={run_dir}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in (done.stdout + done.stderr)
    assert [s for s, _ in ckpt.list_checkpoints(str(run_dir))] == [4]
    assert os.path.isdir(run_dir / "ray" / "train")


def test_node_failure_resumes_from_last_checkpoint(ray_cluster, tmp_path):
    from ray.util.state import list_actors

    from began_dist.distributed.ray_train import run_on_ray

    run_dir = tmp_path / "failure"
    cfg = ray_config(run_dir, "train.steps=120", "train.log_every=5", "train.checkpoint_every=20",
                     "run.max_failures=2", "run.controller_failure_limit=3")
    outcome = {}
    fit = threading.Thread(target=lambda: outcome.update(result=run_on_ray(cfg)), daemon=True)
    fit.start()
    deadline = time.time() + 240
    while time.time() < deadline and not ckpt.list_checkpoints(str(run_dir)):
        time.sleep(0.2)
    assert ckpt.list_checkpoints(str(run_dir)), "no checkpoint appeared"
    workers = list_actors(ray_cluster.address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    busy = {actor.node_id for actor in workers}
    victim = next(node for node in ray_cluster.training_nodes if node.node_id in busy)
    ray_cluster.remove_node(victim, allow_graceful=False)  # the spare node takes over its worker
    ray_cluster.training_nodes.remove(victim)
    fit.join(timeout=400)
    assert not fit.is_alive() and outcome["result"].step == 120
    steps = [line["step"] for line in stats_steps(run_dir)]
    assert steps == list(range(5, 121, 5))  # redone after the checkpoint, none skipped, none twice
    with open(run_dir / "log.txt") as handle:
        log = handle.read()
    assert log.count("new run:") == 1 and log.count("resumed from") >= 1
    assert "worker group restart 1 " in log  # log.txt says the group restarted, and where it runs now
    ray_cluster.training_nodes.append(ray_cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1",
                                                           resources={"train_slot": 1}))
    ray_cluster.wait_for_nodes()


@pytest.mark.cuda
def test_nccl_on_two_gpu_workers(ray_cluster, tmp_path):
    """The GPU path: NCCL process group, one GPU per worker (skipped without CUDA devices)."""
    from began_dist.distributed.ray_train import run_on_ray

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    cfg = ray_config(tmp_path / "gpu", "train.steps=4", "run.gpus_per_worker=1", "run.worker_resources={}")
    result = run_on_ray(cfg)
    assert result.step == 4 and len(set(result.debug["replica_digests"])) == 1
