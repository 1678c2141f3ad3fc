"""Integrity checked once per shard version: a node-local record of verified shards.

`prepare` records each shard's sha256 and size in the manifest. Hashing every shard in
full at every start costs minutes at terabyte scale, in every process, at every restart
and Tune trial. So a reader hashes a shard once, and when it matches it writes a record
of that shard *version*: the fields that change whenever the file's bytes may have, read
by one stat call. Later starts on the node compare those fields only.

    local file:  manifest sha256, path, sha256, size, mtime_ns, ctime_ns
    object:      manifest sha256, URI,  sha256, size, LastModified (FileInfo.mtime_ns)

ctime is set by the kernel on every write, rename or `touch` (it cannot be set back by a
user), so a shard rewritten with the same size and a restored mtime still looks new and is
hashed again. The manifest's own sha256 ties the record to the dataset it was checked for.

Records live in `CACHE_DIR/verified/`, one small JSON file per shard version named by
the hash of its fields, written to a temporary name and renamed (atomic). Workers on one
node take an flock per shard version while they check it, so one hashes and the others
find its record. Without a writable cache directory, verification is remembered for
this process only. (docs/data.md, "Verified once")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Optional

try:
    import fcntl
except ImportError:  # not on Windows: workers may then hash a shard twice, never corrupt a record
    fcntl = None

ENV = "BEGAN_DIST_CACHE_DIR"
log = logging.getLogger(__name__)
_IN_PROCESS: set[str] = set()  # record names verified by this process when the directory cannot be written


def default_cache_dir() -> str:
    """$BEGAN_DIST_CACHE_DIR, else $XDG_CACHE_HOME/began-dist, else ~/.cache/began-dist."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get(ENV) or os.path.join(base, "began-dist")


def shard_version(manifest_sha256: str, location: str, sha256: str, local: bool, size: int,
                  mtime_ns: Optional[int]) -> Optional[dict]:
    """The fields that name one version of a shard, or None when they cannot (no modification time)."""
    version = {"manifest_sha256": manifest_sha256, "location": location, "sha256": sha256, "size": size}
    if local:
        stat = os.stat(location)
        return {**version, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}
    return None if mtime_ns is None else {**version, "last_modified_ns": mtime_ns}


class VerifiedRecord:
    def __init__(self, cache_dir: Optional[str] = None):
        self.dir = os.path.join(os.path.expanduser(cache_dir or default_cache_dir()), "verified")
        self.writable = True

    def name(self, version: dict) -> str:
        return hashlib.sha256(json.dumps(version, sort_keys=True).encode()).hexdigest()

    def has(self, version: dict) -> bool:
        name = self.name(version)
        if name in _IN_PROCESS:
            return True
        try:
            with open(os.path.join(self.dir, name + ".json")) as handle:
                return json.load(handle).get("version") == version
        except (OSError, ValueError):  # absent, or unreadable: verify again
            return False

    def add(self, version: dict) -> None:
        name = self.name(version)
        if not self.writable:
            _IN_PROCESS.add(name)
            return
        try:
            os.makedirs(self.dir, exist_ok=True)
            handle, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.dir)
            with os.fdopen(handle, "w") as file:
                json.dump({"version": version}, file, sort_keys=True)
            os.replace(tmp, os.path.join(self.dir, name + ".json"))
        except OSError as error:
            self._unwritable(error)
            _IN_PROCESS.add(name)

    @contextlib.contextmanager
    def lock(self, version: dict) -> Iterator[None]:
        """Held while one process checks this shard version; others wait for its record (released on exit)."""
        handle = None
        if fcntl is not None and self.writable:
            try:
                os.makedirs(self.dir, exist_ok=True)
                handle = open(os.path.join(self.dir, self.name(version) + ".lock"), "a")
                fcntl.flock(handle, fcntl.LOCK_EX)  # waits at most one hash of this shard
            except OSError as error:
                if handle is not None:
                    handle.close()
                    handle = None
                self._unwritable(error)
        try:
            yield
        finally:
            if handle is not None:
                handle.close()  # releases the flock

    def _unwritable(self, error: OSError) -> None:
        self.writable = False
        log.warning("%s: cannot keep the verified-shard record here (%s); this process checks each shard once",
                    self.dir, error)
