"""The node-local cache of remote shards: fetched once per node, verified on arrival, memory-mapped.

A dataset on object storage (`data.path=s3://...`) is never read whole into each
process. A shard is downloaded once per node into `CACHE_DIR/shards/` (the cache
directory of began_dist/data/verified.py), hashed while it streams in, and kept only if
its size and sha256 match the manifest; the verified record gets the object's version
(URI, size, LastModified). Readers then memory-map the local copy, as for a local
dataset. (docs/data.md, "Datasets on object storage")

- **One fetch per shard per node**: the file is named by the hash of its version, and
  the process that fetches it holds an flock on `verified/NAME.lock`; others wait, find the
  file. A restart, another Tune trial or another worker on the node reuses it. A new
  version of the object (other size or LastModified) is another name: fetched again.
- **Size bound** (`data.cache_gb`): before a fetch, the least recently used shards are
  deleted until the new one fits. A reader holds a shared flock on every cached shard it
  has open (mapped); a shard whose exclusive flock cannot be taken is in use and is
  never deleted. When everything is in use the bound is exceeded rather than stalling
  (warned once). Use refreshes a shard's mtime, which orders the eviction.
- A crash mid-fetch leaves only `.NAME.tmp`, overwritten by the next fetch of that shard.
- **Fetch log**: every download, kept or refused, appends one JSON line to
  `CACHE_DIR/fetches.jsonl` (time, host, pid, the object, bytes, verified): what a node
  fetched across processes and restarts (`fetch_log`); tests count fetches with it.
- **Several at once** (`data.fetch_workers`): `fetch_all` downloads shards in a small
  thread pool; each still takes its own lock and is verified before use. The bytes this
  process is fetching count against the bound before they land. Reads are `BLOCK` large:
  each read of pyarrow's S3 input stream is one ranged GET (docs/data.md, "Fetching").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Optional

from began_dist import uris
from began_dist.data.dataset import DataError
from began_dist.data.verified import VerifiedRecord, default_cache_dir

try:
    import fcntl
except ImportError:  # not on Windows: no shared cache between processes, each fetches for itself
    fcntl = None

DEFAULT_GB = 50.0
DEFAULT_PREFETCH = 8  # shards fetched ahead of use by a reader's background fetcher
DEFAULT_WORKERS = 4  # shards one process downloads at once (data.fetch_workers)
BLOCK = 1 << 24  # bytes per read = per GET request; 64 KB reads ran at 10 MB/s on moto, 16 MB at 360
FETCHED = {"files": 0, "bytes": 0}  # downloads done by this process (tests and benchmarks read it)
POLL_S = 0.05  # how often fetching ahead looks again when the shards ahead are all cached
LOG = "fetches.jsonl"  # CACHE_DIR/<this>: one line per download on this node, by any process
log = logging.getLogger(__name__)


class Pinned:
    """A cached shard held open by a reader: its shared flock keeps it from eviction until `close()`."""

    def __init__(self, path: str, fd: Optional[int]):
        self.path, self.fd = path, fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the shared flock
            self.fd = None

    def __del__(self):
        self.close()


class ShardCache:
    def __init__(self, cache_dir: Optional[str] = None, cache_gb: float = DEFAULT_GB,
                 workers: int = DEFAULT_WORKERS):
        root = os.path.expanduser(cache_dir or default_cache_dir())
        self.dir, self.log = os.path.join(root, "shards"), os.path.join(root, LOG)
        self.limit, self.workers = int(cache_gb * 1e9), max(1, workers)
        self.record = VerifiedRecord(cache_dir)
        self._warned = False
        self._guard, self._incoming = threading.Lock(), 0  # bytes this process's fetches are downloading

    def version(self, store, entry: dict, info) -> dict:
        """The object version this shard's cached copy stands for (the verified record's fields)."""
        return {"manifest_sha256": store.manifest_sha256, "location": uris.join(store.path, entry["file"]),
                "sha256": entry["sha256"], "size": info.size, "last_modified_ns": info.mtime_ns}

    def path(self, version: dict, file: str) -> str:
        return os.path.join(self.dir, self.record.name(version) + os.path.splitext(file)[1])

    def pin(self, store, entry: dict, info) -> Pinned:
        """The local copy of the shard, fetched and verified if absent, held open until the Pinned is closed."""
        for _ in range(3):  # evicted between fetch and pin: fetch again (bounded)
            pinned = _pin(self.get(store, entry, info))
            if pinned is not None:
                return pinned
        raise DataError(f"{store.name(entry['file'])}: the cache at {self.dir} keeps losing it (cache_gb too small?)")

    def get(self, store, entry: dict, info) -> str:
        """The path of the shard's verified local copy, fetched if the cache does not have it."""
        version = self.version(store, entry, info)
        path = self.path(version, entry["file"])
        self.fetch(store, entry, version, path)
        return path

    def fetch_all(self, store, shards: list[tuple[dict, object]]) -> None:
        """Fetch these (entry, object info) shards at once, `workers` at a time: one slow request no
        longer holds up the others, and the store's, the link's and the hash's time overlap."""
        if self.workers == 1 or len(shards) < 2:
            for entry, info in shards:
                self.get(store, entry, info)
            return
        with ThreadPoolExecutor(min(self.workers, len(shards)), thread_name_prefix="began-dist-fetch") as pool:
            for done in [pool.submit(self.get, store, entry, info) for entry, info in shards]:
                done.result()  # the first failure is raised (after the others end: bounded by their fetches)

    def fetch_following(self, store, coming: Callable[[], list[tuple[int, dict, object]]], total: int,
                        stop: threading.Event) -> None:
        """Keep `workers` of the `coming()` (shard, entry, info) not fetched yet downloading, until `stop` or
        all `total` shards were fetched once (then the cache and the reader take over)."""
        done: set[int] = set()
        running: dict[Future, int] = {}
        with ThreadPoolExecutor(self.workers, thread_name_prefix="began-dist-fetch") as pool:
            try:
                while not stop.is_set() and len(done) < total:
                    todo = [job for job in coming() if job[0] not in done and job[0] not in running.values()]
                    for shard, entry, info in todo[: self.workers - len(running)]:
                        running[pool.submit(self.get, store, entry, info)] = shard
                    if not running:
                        stop.wait(POLL_S)
                        continue
                    for future in wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)[0]:
                        done.add(running.pop(future))
                        future.result()
            except Exception as error:  # noqa: BLE001 - the reader fetches it again itself and raises there
                log.info("%s: fetching ahead stopped: %s", store.path, error)
            for future in running:
                future.cancel()

    def fetch(self, store, entry: dict, version: dict, path: str) -> bool:
        """Download and verify the shard unless the cache has it; True when this call downloaded it."""
        if os.path.exists(path) and self.record.has(version):
            return False
        os.makedirs(self.dir, exist_ok=True)
        with self.record.lock(version):  # one fetch per shard per node: the others wait here, then find it
            if os.path.exists(path) and self.record.has(version):
                return False
            with self._guard:
                self._incoming += entry["bytes"]
                self._make_room(self._incoming)  # room for every shard this process is fetching at once
            tmp = os.path.join(self.dir, "." + os.path.basename(path) + ".tmp")
            try:
                size, sha256 = _download(store, entry["file"], tmp)
                self._note(store.location(entry["file"]), size, (size, sha256) == (entry["bytes"], entry["sha256"]))
                if (size, sha256) != (entry["bytes"], entry["sha256"]):
                    raise DataError(f"{store.name(entry['file'])}: checksum mismatch (corrupt): fetched {size} bytes, "
                                    f"sha256 {sha256[:16]}..., the manifest says {entry['bytes']} bytes, "
                                    f"{entry['sha256'][:16]}...; re-run `began-dist prepare` for {store.path}")
                os.replace(tmp, path)
            finally:
                with self._guard:
                    self._incoming -= entry["bytes"]
                if os.path.exists(tmp):
                    os.remove(tmp)
            self.record.add(version)
            with self._guard:
                FETCHED["files"] += 1
                FETCHED["bytes"] += size
            return True

    def _note(self, location: str, size: int, verified: bool) -> None:
        """One line in the node's fetch log; one O_APPEND write, so lines of concurrent writers never mix."""
        line = json.dumps({"time": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
                           "location": location, "bytes": size, "verified": verified}) + "\n"
        try:
            handle = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(handle, line.encode())
            finally:
                os.close(handle)
        except OSError as error:  # a log, never a reason to stop training
            log.warning("%s: cannot append to the fetch log (%s)", self.log, error)

    def _make_room(self, need: int) -> None:
        """Delete least recently used shards no reader holds until `need` more bytes fit under the bound."""
        cached = []
        for entry in os.scandir(self.dir):
            if entry.is_file() and not entry.name.startswith(".") and not entry.name.endswith((".lock", ".json")):
                stat = entry.stat()
                cached.append((stat.st_mtime_ns, stat.st_size, entry.path))
        total = sum(size for _, size, _ in cached)
        for _, size, path in sorted(cached):
            if total + need <= self.limit:
                return
            if _evict(path):
                total -= size
        if total + need > self.limit and not self._warned:
            self._warned = True
            log.warning("%s: the shards in use need more than data.cache_gb=%.1f; the bound is exceeded", self.dir,
                        self.limit / 1e9)


def fetch_log(cache_dir: Optional[str] = None) -> list[dict]:
    """Every fetch this node's cache logged, oldest first (see the module docstring)."""
    path = os.path.join(os.path.expanduser(cache_dir or default_cache_dir()), LOG)
    try:
        with open(path) as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except FileNotFoundError:
        return []


def _download(store, file: str, tmp: str) -> tuple[int, str]:
    """Stream the object to `tmp` (fsynced), hashing on the way: (bytes, sha256)."""
    digest, size = hashlib.sha256(), 0
    with store.fs.open_input_stream(store.location(file)) as source, open(tmp, "wb") as out:
        while block := source.read(BLOCK):
            digest.update(block)
            out.write(block)
            size += len(block)
        out.flush()
        os.fsync(out.fileno())
    return size, digest.hexdigest()


def _pin(path: str) -> Optional[Pinned]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.fstat(fd).st_nlink == 0:  # evicted between open and flock
            os.close(fd)
            return None
    os.utime(path)  # most recently used
    return Pinned(path, fd)


def _evict(path: str) -> bool:
    """Delete a cached shard if no reader holds it (a non-blocking exclusive flock)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.remove(path)
        return True
    except (BlockingIOError, FileNotFoundError):
        return False
    finally:
        os.close(fd)
