"""The placement check and the cluster-address rule, on synthetic node lists (no cluster needed)."""

import pytest

from began_dist.config import ConfigError, load_config
from began_dist.distributed.placement import describe_placement, placeable_workers, wait_for_autoscaler, worker_bundle
from began_dist.distributed.ray_train import cluster_address

SLOT_HOST = {"CPU": 1.0, "train_slot": 1.0, "memory": 2e9}  # a testbed host: one CPU, one slot
HEAD = {"CPU": 1.0, "memory": 2e9}  # the testbed's head: a CPU for drivers, no slot


def bundle_of(*overrides):
    return worker_bundle(load_config(None, list(overrides)).run)


def test_every_resource_a_worker_asks_for_counts():
    slots = bundle_of("run.worker_resources.train_slot=1")
    assert slots == {"CPU": 1.0, "train_slot": 1.0}
    # Three CPUs in all, but only two slots: the third worker could never be placed.
    assert placeable_workers([HEAD, SLOT_HOST, SLOT_HOST], slots) == 2
    assert placeable_workers([HEAD, SLOT_HOST, SLOT_HOST], bundle_of()) == 3
    message = describe_placement([HEAD, SLOT_HOST, SLOT_HOST], slots, 3, "PACK")
    assert "3 workers x 1.0 CPU, 0.0 GPU, 1 train_slot" in message
    assert "3 CPU and 0 GPU and 2 train_slot on 3 node(s), room for 2 of them" in message


def test_workers_are_counted_per_node_not_from_cluster_totals():
    gpu = bundle_of("run.gpus_per_worker=1", "run.cpus_per_worker=4")
    assert gpu == {"CPU": 4.0, "GPU": 1.0}
    nodes = [{"CPU": 6.0, "GPU": 1.0}, {"CPU": 6.0, "GPU": 1.0}]  # 12 CPU in all, 4 + 4 per node
    assert placeable_workers(nodes, bundle_of("run.cpus_per_worker=4")) == 2  # not 12 // 4 = 3
    assert placeable_workers(nodes, gpu) == 2
    assert placeable_workers([{"CPU": 8.0, "GPU": 2.0}], gpu) == 2
    assert placeable_workers([{"CPU": 1.5}, {"CPU": 1.5}], bundle_of("run.cpus_per_worker=0.5")) == 6
    assert placeable_workers([{"CPU": 0.0, "GPU": 0.0}], gpu) == 0  # the AWS head before any worker node
    assert placeable_workers([], gpu) == 0


def test_strategies():
    one = {"CPU": 1.0}
    nodes = [{"CPU": 2.0}, {"CPU": 2.0}, {"CPU": 0.0}]
    assert placeable_workers(nodes, one, "PACK") == placeable_workers(nodes, one, "SPREAD") == 4
    assert placeable_workers(nodes, one, "STRICT_SPREAD") == 2  # one per node, on nodes that fit one
    assert placeable_workers(nodes, one, "STRICT_PACK") == 2  # all on one node
    assert "on separate nodes" in describe_placement(nodes, one, 3, "STRICT_SPREAD")


def test_a_worker_asking_for_nothing_fits_anywhere():
    assert placeable_workers([{"CPU": 0.0}], {"CPU": 0.0}) >= 1000


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def run_wait(observations, workers, **bounds):
    """wait_for_autoscaler over a scripted series of (placeable, launching); the last one repeats."""
    clock, said, seen = Clock(), [], iter(observations)
    last = [observations[0]]

    def observe():
        last[0] = next(seen, last[0])
        return last[0]

    placeable = wait_for_autoscaler(observe, workers, said.append, clock=clock, sleep=clock.sleep, **bounds)
    return placeable, clock.now, said


def test_waits_while_the_autoscaler_adds_nodes():
    # The AWS recipe: a head with no worker CPUs; the autoscaler brings GPU nodes in over minutes.
    script = [(0, 0), (0, 8), (0, 8), (3, 5), (3, 5), (8, 0)]
    placeable, waited, said = run_wait(script, 8, wait_s=900, idle_s=60, poll_s=5)
    assert placeable == 8 and waited == 25
    assert said[0].startswith("waiting for the autoscaler: 0 of 8 workers placeable")
    assert "3 of 8 workers placeable, 5 node(s) launching" in said[-1]
    assert len(said) == 3  # one line per change, not one per poll


def test_gives_up_when_the_autoscaler_launches_nothing():
    placeable, waited, _ = run_wait([(2, 0)], 8, wait_s=900, idle_s=60, poll_s=5)
    assert placeable == 2 and waited == 60


def test_gives_up_at_the_bound_while_nodes_keep_launching():
    placeable, waited, _ = run_wait([(2, 3)], 8, wait_s=120, idle_s=60, poll_s=5)
    assert placeable == 2 and waited == 120


JOB_API = "http://198.18.0.10:8265"


def test_the_job_api_url_in_ray_address_is_not_a_cluster_address():
    # `eval "$(cluster/testbed env)"` exports the job API URL for `ray job submit`.
    assert cluster_address("", {"RAY_ADDRESS": JOB_API}) == ""
    assert cluster_address("", {"RAY_ADDRESS": "HTTPS://head.example:8265"}) == ""
    # Inside a `ray job submit` job, Ray sets RAY_ADDRESS to the GCS address: joined.
    assert cluster_address("", {"RAY_ADDRESS": "198.18.0.10:6379"}) == "198.18.0.10:6379"
    assert cluster_address("", {}) == ""
    assert cluster_address("ray://198.18.0.10:10001", {"RAY_ADDRESS": JOB_API}) == "ray://198.18.0.10:10001"
    assert cluster_address("auto", {}) == "auto"


def test_a_job_api_url_given_as_run_address_is_refused():
    with pytest.raises(ConfigError) as refused:
        cluster_address(JOB_API, {})
    message = str(refused.value)
    assert message.startswith(f"run.address={JOB_API}: that is the job API URL")
    assert f"ray job submit --address {JOB_API}" in message and "HOST:6379" in message


def test_train_refuses_a_job_api_address_with_exit_2(tmp_path, capsys):
    from began_dist.cli import main

    code = main(["train", "--workers", "2", "--address", JOB_API, f"run.dir={tmp_path / 'run'}"])
    assert code == 2
    assert "run.address=http://198.18.0.10:8265: that is the job API URL" in capsys.readouterr().err
