"""Datasets on object storage, through the node cache: a real S3 server (moto) on 127.0.0.1.

`prepare` writes s3:// directly, training (local mode) reads it through the node cache: each
shard fetched once per node (counted by began_dist.data.cache.FETCHED, the downloads this
process made), verified on arrival, a corrupt object refused by name. Across hosts (Ray
Train workers on two hosts, two workers sharing one node's cache, `prepare --workers 2` as
Ray tasks, a corrupt shard met mid-run): tests/test_testbed_data.py.
"""

import os
import threading
import time

import pyarrow.fs as pafs
import pytest
import torch
from helpers import TINY

from began_dist import uris
from began_dist.cli import main
from began_dist.data import ShardedDataset, cache, sources
from began_dist.data.sampler import GlobalBatchSampler

COUNT = 40  # CRS images, 3 shards
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def store():
    """moto's S3 server on 127.0.0.1 with a bucket; returns uri(sub-path) -> an s3:// URI that reaches it."""
    from moto.server import ThreadedMotoServer

    saved = {key: os.environ.get(key) for key in AWS}
    os.environ.update(AWS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        port = server.get_host_and_port()[1]
        query = f"region=us-east-1&scheme=http&endpoint_override=127.0.0.1:{port}"
        pafs.S3FileSystem(region="us-east-1", scheme="http", endpoint_override=f"127.0.0.1:{port}",
                          allow_bucket_creation=True).create_dir(
            "bucket")
        yield lambda sub: f"s3://bucket/{sub}?{query}"
    finally:
        server.stop()
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.update({key: value})


@pytest.fixture(scope="module")
def expected():
    images, y, _ = sources.crs_render(sources.crs_grid(["square+cross", "square"], COUNT), 16)
    return torch.from_numpy(images).permute(0, 3, 1, 2), y


def prepare(out, *extra, format_name="arrow"):
    return main(["prepare", "shapes", out, "--format", format_name, "--size", "16", "--shards", "3",
                 "--limit", str(COUNT), *extra])


@pytest.fixture(scope="module", params=["arrow", "hdf5"])
def remote(request, store):
    """A CRS training set prepared straight into the store: (its URI, format)."""
    out = store(f"crs-{request.param}")
    assert prepare(out, format_name=request.param) == 0
    return uris.join(out, "train"), request.param


@pytest.fixture
def node_cache(tmp_path, monkeypatch):
    """An empty node cache for this test (the verified record and the shards)."""
    monkeypatch.setenv("BEGAN_DIST_CACHE_DIR", str(tmp_path / "cache"))
    return str(tmp_path / "cache")


def fetched_while(action) -> int:
    before = cache.FETCHED["files"]
    action()
    return cache.FETCHED["files"] - before


def cached_files(node_cache):
    folder = os.path.join(node_cache, "shards")
    return sorted(f for f in os.listdir(folder) if f.endswith((".arrow", ".h5"))) if os.path.isdir(folder) else []


def test_train_on_s3_shards_and_a_restart_fetches_nothing_again(remote, node_cache, tmp_path, expected):
    uri, format_name = remote
    data = [*TINY, "data.source=shards", f"data.path={uri}", "train.batch_size=8"]
    assert fetched_while(lambda: main(["train", *data, "train.steps=1", "--workers", "0",
                                       f"run.dir={tmp_path / 'probe'}", "model.image_size=32"])) == 0  # refused
    assert fetched_while(lambda: main(["train", *data, "train.steps=2", f"run.dir={tmp_path / 'run'}"]) == 0) == 3
    assert len(cached_files(node_cache)) == 3  # each shard once, into the cache: never read whole per process
    logged = cache.fetch_log(node_cache)  # the node's fetch log, which counts across processes
    assert sorted(entry["location"].rsplit("/", 1)[1] for entry in logged if entry["verified"]) == [
        f"shard-{i:05d}.{'arrow' if format_name == 'arrow' else 'h5'}" for i in range(3)]
    inodes = {name: os.stat(os.path.join(node_cache, "shards", name)).st_ino for name in cached_files(node_cache)}
    assert fetched_while(lambda: main(["train", "--resume", str(tmp_path / "run"), "train.steps=4"]) == 0) == 0
    assert fetched_while(lambda: main(["train", *data, "train.steps=2", f"run.dir={tmp_path / 'another'}"])) == 0
    assert inodes == {name: os.stat(os.path.join(node_cache, "shards", name)).st_ino
                      for name in cached_files(node_cache)}
    dataset = ShardedDataset(uri)
    order = torch.randperm(COUNT, generator=torch.Generator().manual_seed(0))
    assert torch.equal(dataset.batch(order), expected[0][order]) and dataset.labels.tolist() == expected[1].tolist()


def test_the_driver_reads_the_manifest_and_a_listing_only(remote, node_cache):
    uri, _ = remote
    assert fetched_while(lambda: ShardedDataset(uri)) == 0
    assert ShardedDataset(uri).label_width == 2 and cached_files(node_cache) == []


def test_label_rows_fetch_only_the_shards_they_need(remote, node_cache, expected):
    dataset, rows = ShardedDataset(remote[0]), torch.tensor([3, 0, 7])  # all in shard 0
    assert fetched_while(lambda: dataset.label_rows(rows)) == 1
    assert dataset.label_rows(rows).tolist() == expected[1][rows.numpy()].tolist()


def test_a_corrupt_object_is_refused_naming_the_shard(remote, store, node_cache, tmp_path, capsys):
    uri, format_name = remote
    fs, base = pafs.FileSystem.from_uri(uri)
    copy = store(f"corrupt-{format_name}")
    copy_fs, copy_base = pafs.FileSystem.from_uri(copy)
    pafs.copy_files(base, copy_base, source_filesystem=fs, destination_filesystem=copy_fs)
    name = f"shard-00001.{'arrow' if format_name == 'arrow' else 'h5'}"
    with copy_fs.open_input_stream(f"{copy_base}/{name}") as stream:
        data = bytearray(stream.read())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 on arrival can tell
    with copy_fs.open_output_stream(f"{copy_base}/{name}") as stream:
        stream.write(bytes(data))
    code = main(["train", *TINY, "data.source=shards", f"data.path={copy}", "train.batch_size=8", "train.steps=2",
                 f"run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and name in err and "checksum mismatch" in err
    assert len(cached_files(node_cache)) <= 2  # the corrupt copy never entered the cache
    assert [entry["verified"] for entry in cache.fetch_log(node_cache) if name in entry["location"]][:1] == [False]
    with copy_fs.open_output_stream(f"{copy_base}/{name}") as stream:
        stream.write(bytes(data[:-100]))  # truncated: the driver's listing refuses it before any work
    assert main(["train", *TINY, "data.source=shards", f"data.path={copy}", "train.steps=2",
                 f"run.dir={tmp_path / 'run2'}"]) == 2
    assert name in capsys.readouterr().err and not os.path.exists(tmp_path / "run2")


@pytest.mark.parametrize("remote", ["arrow"], indirect=True)
def test_the_cache_is_bounded_and_never_evicts_an_open_shard(remote, node_cache, expected):
    uri, _ = remote
    sizes = [entry["bytes"] for entry in ShardedDataset(uri).manifest["shards"]]
    holder = ShardedDataset(uri, cache_gb=1.0)
    holder.batch(torch.tensor([0]))  # shard 0 open (and pinned) in this reader
    small = ShardedDataset(uri, cache_gb=(max(sizes) * 1.5) / 1e9)  # room for one shard and a half
    everything = torch.arange(COUNT)
    assert torch.equal(small.batch(everything), expected[0])
    assert torch.equal(small.batch(everything.flip(0)), expected[0].flip(0))
    left = cached_files(node_cache)
    shard0 = os.path.basename(holder._open_shards[0][2].path)
    assert shard0 in left and len(left) <= 2  # the pinned shard stayed; others were evicted to fit
    holder.close()
    small.close()


@pytest.mark.parametrize("remote", ["arrow"], indirect=True)
@pytest.mark.parametrize("workers, overlap", [(1, False), (4, True)])
def test_a_batch_fetches_its_shards_at_once_each_once_per_node_and_verified(remote, node_cache, expected,
                                                                            monkeypatch, workers, overlap):
    uri, _ = remote
    downloads, running, peak, guard = [], [0], [0], threading.Lock()
    real = cache._download

    def download(store, file, tmp):  # the real download, held 0.3 s so that downloads at once overlap
        with guard:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            downloads.append(file)
        time.sleep(0.3)
        try:
            return real(store, file, tmp)
        finally:
            with guard:
                running[0] -= 1

    monkeypatch.setattr(cache, "_download", download)
    readers = [ShardedDataset(uri, fetch_workers=workers) for _ in range(2)]
    everything, results = torch.arange(COUNT), {}
    threads = [threading.Thread(target=lambda r=r: results.update({r: r.batch(everything)})) for r in readers]
    for thread in threads:  # two readers on one node, each needing every shard for its first batch
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(torch.equal(results.get(reader, torch.empty(0)), expected[0]) for reader in readers)
    assert sorted(downloads) == [f"shard-{i:05d}.arrow" for i in range(3)]  # each shard once per node
    logged = cache.fetch_log(node_cache)
    assert len(logged) == 3 and all(entry["verified"] for entry in logged)
    assert (peak[0] > 1) == overlap
    for reader in readers:
        reader.close()


@pytest.mark.parametrize("remote", ["hdf5"], indirect=True)
def test_shards_are_fetched_ahead_in_the_order_the_sampler_reads_them(remote, node_cache):
    uri, _ = remote
    dataset = ShardedDataset(uri, prefetch=1)
    sampler = GlobalBatchSampler(COUNT, 8, seed=3, rank=1, world=2)
    first = dataset.upcoming_shards(sampler, sampler.position, 1)[0]
    dataset.follow(sampler)  # no batch asked for: the fetcher alone
    deadline = time.monotonic() + 60
    while not cached_files(node_cache) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    store = dataset._store
    entry = dataset.manifest["shards"][first]
    version = dataset._cache.version(store, entry, dataset._infos[entry["file"]])
    assert cached_files(node_cache) == [os.path.basename(dataset._cache.path(version, entry["file"]))]
    dataset.close()


def test_prepare_refuses_an_out_in_the_store_that_holds_a_dataset(store, remote, capsys):
    assert prepare(store(f"crs-{remote[1]}"), format_name=remote[1]) == 2
    assert "already holds a dataset" in capsys.readouterr().err


@pytest.mark.parametrize("remote", ["arrow"], indirect=True)
def test_a_sweep_keeps_an_s3_data_path(remote):
    """Tune trials read the same URI (local paths are made absolute for the trial directories)."""
    from began_dist.tune.spec import load_spec
    from began_dist.tune.sweep import trial_base

    spec, base = load_spec(os.path.join(os.path.dirname(__file__), "..", "tune", "smoke.yaml"),
                           ["data.source=shards", f"data.path={remote[0]}"])
    assert trial_base(spec, base).data.path == remote[0]


def test_a_bad_shard_in_a_ray_worker_is_a_refusal_for_this_launch_only(tmp_path):
    """distributed/refusals.py without Ray: one worker returns the refusal; with more, it is recorded
    in RUN_DIR under the launch's token (what a restarted group and the driver read) and raised."""
    from began_dist.data import DataError
    from began_dist.distributed import refusals
    from began_dist.train.result import Status

    def bad():
        raise DataError("s3://b/d/shard-00001.arrow: checksum mismatch (corrupt)")

    run_dir = str(tmp_path)
    alone = refusals.run_refusing_bad_data(bad, run_dir, "t1", world=1)
    assert alone.status is Status.refused and "shard-00001.arrow" in alone.message
    assert refusals.recorded(run_dir, "t1") == "" and refusals.after_failure(run_dir, "t1") is None
    with pytest.raises(DataError):
        refusals.run_refusing_bad_data(bad, run_dir, "t1", world=2)
    assert "shard-00001.arrow: checksum" in refusals.agreed(run_dir, "t1")  # what a restarted worker reads
    assert refusals.recorded(run_dir, "t2") == ""  # another launch (a --resume) is not refused by it
    assert refusals.after_failure(run_dir, "t1").status is Status.refused
    refusals.clear(run_dir)
    assert refusals.recorded(run_dir, "t1") == "" and os.listdir(run_dir) == []
