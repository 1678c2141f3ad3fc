"""Datasets on object storage across hosts: cluster/testbed's store and hosts (root; run last).

The dataset is prepared into the testbed's store from the machine (one process). Each
host has its own node cache (`data.cache_dir` under its private /tmp) and its fetch log
(began_dist/data/cache.py, `CACHE_DIR/fetches.jsonl`), read here to count the fetches.
"""

import json
import subprocess
import uuid

import pyarrow.fs as pafs
import pytest
from helpers import TINY

from began_dist import storage, uris
from began_dist.cli import main
from began_dist.data import ShardedDataset
from began_dist.train import state as ckpt

pytestmark = pytest.mark.testbed

COUNT, SHARDS = 48, 3
PREPARE = ["shapes", "--format", "arrow", "--size", "16", "--shards", str(SHARDS), "--limit", str(COUNT)]
TWO_HOSTS = ["--workers", "2", "run.worker_resources.train_slot=1"]  # one worker on each of two hosts (1 slot each)


@pytest.fixture(scope="module")
def store(testbed_client):
    """The store's URI; this process has its credentials (conftest.testbed_client)."""
    return testbed_client["BEGAN_TESTBED_STORE"]


@pytest.fixture(scope="module")
def dataset(store):
    """A CRS training set prepared into the store from the machine, by one process: its URI."""
    out = uris.join(store, f"data3-{uuid.uuid4().hex[:8]}")
    assert main(["prepare", PREPARE[0], out, *PREPARE[1:]]) == 0
    return out


def submit(testbed, *command: str, timeout: float = 400) -> tuple[int, str]:
    """`ray job submit -- COMMAND` from the machine to host0's job API: (exit code, output)."""
    job = subprocess.run(["ray", "job", "submit", "--", *command], env=testbed.client_env(), capture_output=True,
                         text=True, timeout=timeout)  # fmt: skip
    return job.returncode, job.stdout + job.stderr


def train(testbed, data: str, run_dir: str, cache: str, *extra: str) -> tuple[int, str]:
    return submit(testbed, "began-dist", "train", *TINY, "train.batch_size=8", "data.source=shards",
                  f"data.path={data}", f"data.cache_dir={cache}", f"run.dir={run_dir}", *extra)


def fetches(testbed, host: str, cache: str) -> list[dict]:
    """The fetch log of `host`'s node cache at `cache` (a path in the host's private /tmp)."""
    result = testbed.exec(host, "cat", f"{cache}/fetches.jsonl")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()] if result.returncode == 0 else []


def shards_fetched(log: list[dict]) -> list[str]:
    return sorted(entry["location"].rsplit("/", 1)[1] for entry in log)


def test_two_workers_on_one_host_then_on_two_hosts_fetch_each_shard_once_per_node(testbed, dataset, store):
    """Two workers packed on one host fetch each shard once between them (the per-shard lock); the
    run resumed on two hosts fetches nothing on that node again and each shard once on the other."""
    cache, run_dir = f"/tmp/cache-{uuid.uuid4().hex[:8]}", uris.join(store, f"runs/s3data-{uuid.uuid4().hex[:8]}")
    code, out = train(testbed, uris.join(dataset, "train"), run_dir, cache, "--workers", "2", "train.steps=4",
                      "run.cpus_per_worker=0.5", "run.worker_resources.train_slot=0.5",
                      "run.placement_strategy=STRICT_PACK")
    assert code == 0, out[-4000:]
    used = testbed.worker_hosts(out)
    assert len(used) == 1 and "host0" not in used, out[-4000:]  # both workers on one host, not the head
    packed = used.pop()
    everything = [f"shard-{i:05d}.arrow" for i in range(SHARDS)]
    first = fetches(testbed, packed, cache)
    # both workers' fetchers ask for every shard; one downloads it, verified on arrival
    assert shards_fetched(first) == everything and all(entry["verified"] for entry in first), first
    for host in set(testbed.hosts()) - {packed}:  # the driver (host0) and the hosts without a worker: nothing
        assert fetches(testbed, host, cache) == [], host

    code, out = submit(testbed, "began-dist", "train", "--resume", run_dir, "train.steps=8", *TWO_HOSTS[2:],
                       "run.cpus_per_worker=1", "run.placement_strategy=PACK")
    assert code == 0, out[-4000:]
    pair = testbed.worker_hosts(out)
    assert len(pair) == 2 and "host0" not in pair, out[-4000:]  # a worker on each of two hosts
    assert fetches(testbed, packed, cache) == first  # the restart fetched nothing where the shards are
    for host in pair - {packed}:
        assert shards_fetched(fetches(testbed, host, cache)) == everything, host
    steps = [json.loads(line)["step"] for line in storage.read_text(uris.join(run_dir, "stats.jsonl")).splitlines()]
    assert steps == [2, 4, 6, 8]


def test_an_object_corrupted_in_the_store_is_refused_naming_the_shard_and_not_retried(testbed, dataset, store):
    fs, base = pafs.FileSystem.from_uri(uris.join(dataset, "train"))
    copy = uris.join(store, f"corrupt-{uuid.uuid4().hex[:8]}")
    copy_fs, copy_base = pafs.FileSystem.from_uri(copy)
    pafs.copy_files(base, copy_base, source_filesystem=fs, destination_filesystem=copy_fs)
    name = "shard-00001.arrow"
    with copy_fs.open_input_stream(f"{copy_base}/{name}") as stream:
        data = bytearray(stream.read())
    data[len(data) // 2] ^= 0xFF  # same size: the listing passes, only the sha256 on arrival can tell
    with copy_fs.open_output_stream(f"{copy_base}/{name}") as stream:
        stream.write(bytes(data))
    cache, run_dir = f"/tmp/cache-{uuid.uuid4().hex[:8]}", uris.join(store, f"runs/corrupt-{uuid.uuid4().hex[:8]}")
    code, out = train(testbed, copy, run_dir, cache, *TWO_HOSTS, "train.steps=8", "run.max_failures=2")
    assert code != 0 and "code 2" in out, out[-4000:]  # the driver's exit 2: refused
    refusal = [line for line in out.splitlines() if line.startswith("began-dist: ")]
    assert refusal and f"{storage.display(copy)}/{name}: checksum mismatch" in refusal[-1], out[-4000:]
    for host in testbed.hosts():  # wherever the workers ran
        log = fetches(testbed, host, cache)
        corrupt = [entry for entry in log if entry["location"].endswith(name)]
        assert all(not entry["verified"] for entry in corrupt) and name not in shards_fetched(
            [entry for entry in log if entry["verified"]])
        # one attempt's worker fetched it (fetcher, then reader) at most twice; each of Ray's 2 retries would add 2
        assert len(corrupt) <= 2, (host, log)
    assert not storage.exists(uris.join(run_dir, ".began-dist-refused"))  # the driver removed its record
    assert ckpt.list_checkpoints(run_dir) == []  # no step was trained to a checkpoint


def test_prepare_as_ray_tasks_on_two_hosts_writes_the_same_shards(testbed, dataset, store):
    out = uris.join(store, f"data3-ray-{uuid.uuid4().hex[:8]}")
    submission = f"data3-prepare-{uuid.uuid4().hex[:8]}"
    job = subprocess.run(["ray", "job", "submit", "--submission-id", submission, "--", "began-dist", "prepare",
                          PREPARE[0], out, *PREPARE[1:], "--workers", "2"],
                         env=testbed.client_env(), capture_output=True, text=True, timeout=400)  # fmt: skip
    assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]
    by_ray, one = (ShardedDataset(uris.join(where, "train")).manifest for where in (out, dataset))
    assert [s["sha256"] for s in by_ray["shards"]] == [s["sha256"] for s in one["shards"]]
    assert len(by_ray["shards"]) == SHARDS and by_ray["count"] == COUNT

    jobs = testbed.exec("host0", "ray", "list", "jobs", "--format", "json", "--filter", f"submission_id={submission}")
    assert jobs.returncode == 0, jobs.stderr
    tasks = testbed.exec("host0", "ray", "list", "tasks", "--format", "json", "--limit", "10000", "--filter",
                         f"job_id={json.loads(jobs.stdout)[0]['job_id']}")
    assert tasks.returncode == 0, tasks.stderr
    mine = [task for task in json.loads(tasks.stdout) if "write_one" in task["func_or_class_name"]]
    heldout = ShardedDataset(uris.join(out, "heldout")).manifest  # shapes writes two splits: a task per shard
    assert len(mine) == SHARDS + len(heldout["shards"]) and {task["state"] for task in mine} == {"FINISHED"}, mine
    assert len({task["node_id"] for task in mine}) >= 2, mine  # spread: tasks ran on two hosts or more
