"""Integrity checked once per shard version: the node-local record of verified shards."""

import os
import subprocess
import sys
import threading

import pytest

from began_dist.cli import main
from began_dist.data import DataError, ShardedDataset, reader
from began_dist.data.verified import VerifiedRecord, shard_version


@pytest.fixture
def shards(tmp_path):
    """A fresh 3-shard Arrow dataset (40 CRS images at 16 px) and an empty record directory."""
    assert main(["prepare", "shapes", str(tmp_path / "crs"), "--format", "arrow", "--size", "16", "--shards", "3",
                 "--limit", "40"]) == 0
    return str(tmp_path / "crs" / "train"), str(tmp_path / "cache")


def hashed_while(action) -> int:
    before = reader.HASHED["files"]
    action()
    return reader.HASHED["files"] - before


def shard(path, index=1):
    return os.path.join(path, f"shard-{index:05d}.arrow")


def test_a_later_start_hashes_nothing(shards):
    path, cache = shards
    assert hashed_while(lambda: ShardedDataset(path, cache_dir=cache)) == 3
    assert hashed_while(lambda: ShardedDataset(path, cache_dir=cache)) == 0
    assert len([f for f in os.listdir(os.path.join(cache, "verified")) if f.endswith(".json")]) == 3
    assert hashed_while(lambda: ShardedDataset(path, cache_dir=cache + "-other")) == 3  # the record is per node dir
    assert hashed_while(lambda: main(["prepare", "--verify", path])) == 3  # --verify always hashes in full
    probe = ("from began_dist.data import ShardedDataset, reader; "
             f"ShardedDataset({path!r}, cache_dir={cache!r}); print(reader.HASHED['files'])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.getcwd()}, check=True).stdout
    assert out.strip() == "0"  # another process on the node: the record on disk is enough


def test_a_rewritten_shard_is_hashed_again_and_refused_even_with_its_mtime_restored(shards):
    path, cache = shards
    ShardedDataset(path, cache_dir=cache)
    os.utime(shard(path))  # touched: a new version, same bytes: hashed again and accepted
    assert hashed_while(lambda: ShardedDataset(path, cache_dir=cache)) == 1
    stat = os.stat(shard(path))
    with open(shard(path), "r+b") as handle:  # same size, other bytes
        handle.seek(stat.st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(shard(path), ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime as before: ctime still moved
    with pytest.raises(DataError, match=r"shard-00001\.arrow: checksum mismatch"):
        ShardedDataset(path, cache_dir=cache)
    with pytest.raises(DataError, match=r"shard-00001\.arrow: checksum mismatch"):
        ShardedDataset(path, cache_dir=cache)  # and again: a bad shard is never recorded


def test_workers_on_one_node_wait_for_the_one_that_hashes(shards):
    """While one process holds a shard version's lock, another waits, then takes its record instead of hashing."""
    path, cache = shards
    store = reader.DatasetDir(path)
    entry = store.manifest["shards"][0]
    version = shard_version(store.manifest_sha256, store.location(entry["file"]), entry["sha256"], True,
                            entry["bytes"], None)
    record, before = VerifiedRecord(cache), reader.HASHED["files"]
    with record.lock(version):
        worker = threading.Thread(target=ShardedDataset, args=(path,), kwargs={"cache_dir": cache})
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive()  # waiting on shard-00000
        record.add(version)  # as if this holder had hashed it
    worker.join(timeout=60)
    assert not worker.is_alive() and reader.HASHED["files"] - before == 2  # shards 1 and 2 only


def test_an_unwritable_record_directory_still_verifies(shards, caplog):
    path, _ = shards
    blocker = os.path.join(os.path.dirname(path), "a-file")
    open(blocker, "w").close()
    assert hashed_while(lambda: ShardedDataset(path, cache_dir=blocker)) == 3  # cache dir is a file: cannot write
    assert "cannot keep the verified-shard record" in caplog.text
    assert hashed_while(lambda: ShardedDataset(path, cache_dir=blocker)) == 0  # remembered in this process


def test_data_limit_reads_and_checks_only_the_shards_it_needs(shards):
    path, cache = shards
    os.remove(shard(path, 2))
    assert hashed_while(lambda: ShardedDataset(path, limit=20, cache_dir=cache)) == 2
    with pytest.raises(DataError, match=r"shard-00002\.arrow: missing"):
        ShardedDataset(path, cache_dir=cache)
