"""The sharded reader: a map-style dataset over a prepared dataset directory.

Construction checks everything a run depends on before training starts: the
manifest, that every shard the run reads exists with the manifest's size and sha256,
and that its schema and row count match the manifest. Any failure is a DataError
naming the file (exit 2), so a run never silently trains on fewer images. A shard's
sha256 is computed once per shard version on a node (began_dist/data/verified.py).

Files are opened lazily, shard by shard, in the process that reads (never inside
something pickled or forked): local Arrow shards are memory-mapped and read zero-copy,
local HDF5 shards through memory maps of their uncompressed chunks. `data.path` may also
be a file://, s3:// or gs:// URI (other schemes are refused before pyarrow.fs sees
them): then the driver reads the manifest and one listing only, and each node fetches a
shard once into its cache, verifies it on arrival and maps it from there
(began_dist/data/cache.py). HDF5 shards are opened so that they read only themselves
(began_dist/data/hdf5.py).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch

from began_dist import uris
from began_dist.data import cache
from began_dist.data import format as fmt
from began_dist.data.blocks import arrow_blocks, arrow_source, hdf5_blocks, hdf5_file
from began_dist.data.dataset import DataError, ImageDataset
from began_dist.data.verified import VerifiedRecord, shard_version

HASHED = {"files": 0, "bytes": 0}  # what this process has hashed (tests and benchmarks read it)
log = logging.getLogger(__name__)


def open_filesystem(path: str, key: str = "data.path") -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI of a scheme `uris.SCHEMES` lists."""
    if not uris.uri_scheme(path, key, DataError):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    try:
        return pafs.FileSystem.from_uri(path)
    except (pa.ArrowException, ValueError) as error:
        raise DataError(f"{key}={path}: cannot open this location: {error}") from None


class DatasetDir:
    """A dataset directory on a local disk or behind a pyarrow.fs URI."""

    def __init__(self, path: str, key: str = "data.path"):
        self.path = path
        self.fs, self.base = open_filesystem(path, key)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        text = self.read_text(fmt.MANIFEST)
        self.manifest = fmt.parse_manifest(text, self.name(fmt.MANIFEST))
        self.manifest_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()

    def location(self, file: str) -> str:
        return f"{self.base.rstrip('/')}/{file}"

    def name(self, file: str) -> str:
        """How errors name a file: the path or URI given joined with it, without a URI's `?query` (endpoint)."""
        return uris.join(self.path, file).partition("?")[0] if "://" in self.path else uris.join(self.path, file)

    def read_text(self, file: str) -> str:
        try:
            with self.fs.open_input_stream(self.location(file)) as stream:
                return stream.read().decode("utf-8")
        except (FileNotFoundError, pa.ArrowException, OSError, UnicodeDecodeError) as error:
            raise DataError(f"{self.name(file)}: cannot read the dataset manifest ({error})") from None

    def info(self, file: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self.location(file))

    def sha256(self, file: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open_input_stream(self.location(file)) as stream:
            while block := stream.read(1 << 22):
                digest.update(block)
                HASHED["bytes"] += len(block)
        HASHED["files"] += 1
        return digest.hexdigest()

    def read_bytes(self, file: str) -> bytes:
        with self.fs.open_input_file(self.location(file)) as handle:
            return handle.read()


# -- integrity ---------------------------------------------------------------------------------
def shard_status(store: DatasetDir, entry: dict, checksums: bool, record: Optional[VerifiedRecord] = None) -> str:
    """'ok', or what is wrong with one shard: missing, truncated/grown, checksum mismatch, schema.

    With `checksums`, the sha256 is computed in full unless `record` holds this shard version.
    """
    info = store.info(entry["file"])
    if info.type != pafs.FileType.File:
        return "missing"
    if info.size != entry["bytes"]:
        return f"size {info.size} bytes, the manifest says {entry['bytes']} (truncated or replaced)"
    if checksums and not _sha256_matches(store, entry, info, record):
        return "checksum mismatch (corrupt)"
    try:
        check_shard_schema(store, entry)
    except DataError as error:
        return str(error).removeprefix(f"{store.name(entry['file'])}: ")
    return "ok"


def _sha256_matches(store: DatasetDir, entry: dict, info: pafs.FileInfo, record: Optional[VerifiedRecord]) -> bool:
    location = store.location(entry["file"]) if store.local else uris.join(store.path, entry["file"])  # path, URI
    version = record and shard_version(store.manifest_sha256, location, entry["sha256"], store.local, info.size,
                                       info.mtime_ns)  # stat before hashing: a write meanwhile makes a new version
    if not version:
        return store.sha256(entry["file"]) == entry["sha256"]
    with record.lock(version):
        if record.has(version):
            return True
        if store.sha256(entry["file"]) != entry["sha256"]:
            return False
        record.add(version)
    return True


def check_shard_schema(store: DatasetDir, entry: dict, path: Optional[str] = None) -> None:
    """The shard's schema and row count against the manifest (`path`: a local copy of a remote shard)."""
    manifest, where = store.manifest, store.name(entry["file"])
    try:
        if manifest["format"] == "arrow":
            reader = pa.ipc.open_file(arrow_source(store, entry["file"], path))
            fmt.check_arrow_schema(reader.schema, manifest, where)
            rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        else:
            with hdf5_file(store, entry["file"], path) as handle:
                fmt.check_hdf5_layout(handle, manifest, entry["count"], where)
                rows = handle["images"].shape[0]
    except (pa.ArrowException, OSError, KeyError) as error:
        raise DataError(f"{where}: unreadable shard ({error})") from None
    if rows != entry["count"]:
        raise DataError(f"{where}: {rows} images, the manifest says {entry['count']}")


def verify_shards(path: str) -> list[dict]:
    """Every shard of the manifest with its status after a full checksum (`prepare --verify`: no record used)."""
    store = DatasetDir(path, key="prepare --verify")
    return [{**entry, "status": shard_status(store, entry, checksums=True)} for entry in store.manifest["shards"]]


# -- the dataset -------------------------------------------------------------------------------
class ShardedDataset(ImageDataset):
    """The images (and labels) of a prepared dataset directory, by global index.

    A local dataset is checked in full here (each shard once per version, the verified
    record). A remote one (s3://, gs://) is checked here only as far as the manifest and one
    listing of the objects' sizes go, so the driver needs no copy of the data; each shard is
    then fetched into the node cache when first needed, verified on arrival and
    memory-mapped from there (began_dist/data/cache.py). `follow(sampler)` starts a
    background fetcher that fetches the next `prefetch` shards in the order the sampler
    will need them, `fetch_workers` at once; a gather fetches the shards it lacks at once too.
    """

    def __init__(self, path: str, limit: int = 0, checksums: bool = True, cache_dir: Optional[str] = None,
                 cache_gb: float = cache.DEFAULT_GB, prefetch: int = cache.DEFAULT_PREFETCH,
                 fetch_workers: int = cache.DEFAULT_WORKERS):
        """`cache_dir`: the node-local verified record and shard cache (None: verified.default_cache_dir)."""
        self.path, self.cache_dir, self.cache_gb, self.prefetch = path, cache_dir, cache_gb, prefetch
        self.fetch_workers = fetch_workers
        store = DatasetDir(path)
        manifest = self.manifest = store.manifest
        self.remote = not store.local
        self.count = min(limit, manifest["count"]) if limit else manifest["count"]
        if self.remote:
            listing = self._check_listing(store)
        else:
            record = VerifiedRecord(cache_dir) if checksums else None
            for entry in self._shards():
                status = shard_status(store, entry, checksums, record)
                if status != "ok":
                    raise DataError(f"{store.name(entry['file'])}: {status}; re-run `began-dist prepare` for {path}")
        if manifest["height"] != manifest["width"]:
            raise DataError(f"{store.name(fmt.MANIFEST)}: images must be square, not {manifest['height']}x"
                            f"{manifest['width']}")
        self.image_size, self.channels = manifest["height"], manifest["channels"]
        self.label_names = list(manifest["labels"])
        self._shard_starts = np.cumsum([0] + [entry["count"] for entry in self._shards()])[:-1]
        self._reset()
        self._store, self._infos = store, (listing if self.remote else None)  # no second look in this process
        self._labels, self._follow = None, None  # labels: (N, K) int64 once read

    def _reset(self) -> None:
        """Forget this process's open shards (after a fork or unpickling they belong to another process)."""
        self._store: Optional[DatasetDir] = None
        self._open_shards: OrderedDict[int, tuple] = OrderedDict()  # shard -> (blocks, starts, pinned, bytes)
        self._open_bytes, self._pid = 0, os.getpid()
        self._infos: Optional[dict] = None
        self._cache: Optional[cache.ShardCache] = None
        self._lock = threading.Lock()
        self._fetcher: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def __len__(self) -> int:
        return self.count

    def _shards(self) -> list[dict]:
        """The shards that hold images 0 .. count-1: all but those data.limit leaves out, which are not read."""
        shards, ends = self.manifest["shards"], np.cumsum([entry["count"] for entry in self.manifest["shards"]])
        return shards[: int(np.searchsorted(ends, self.count)) + 1]

    def _check_listing(self, store: DatasetDir) -> dict:
        """One listing of a remote dataset: every shard the run reads present with the manifest's size."""
        try:
            found = {info.base_name: info for info in store.fs.get_file_info(pafs.FileSelector(store.base))}
        except (pa.ArrowException, OSError) as error:
            raise DataError(f"{store.path}: cannot list the dataset's shards ({error})") from None
        for entry in self._shards():
            info = found.get(entry["file"])
            if info is None or info.type != pafs.FileType.File:
                status = "missing"
            elif info.size != entry["bytes"]:
                status = f"size {info.size} bytes, the manifest says {entry['bytes']} (truncated or replaced)"
            else:
                continue
            raise DataError(f"{store.name(entry['file'])}: {status}; re-run `began-dist prepare` for {store.path}")
        return found

    def __getstate__(self) -> dict:
        # open files, memory maps, pins and the fetcher stay in the process that opened them
        state = {key: value for key, value in self.__dict__.items() if not key.startswith("_")}
        return {**state, "_labels": self._labels, "_shard_starts": self._shard_starts, "_follow": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def _context(self) -> DatasetDir:
        if self._pid != os.getpid():
            follow, self._follow = self._follow, None
            self._reset()  # a forked child: the parent's maps, pins and threads are not its own
            self.follow(follow)
        if self._store is None:
            self._store = DatasetDir(self.path)
        if self.remote and self._cache is None:
            self._infos = self._infos or self._check_listing(self._store)
            self._cache = cache.ShardCache(self.cache_dir, self.cache_gb, self.fetch_workers)
        return self._store

    def _shard(self, index: int) -> tuple:
        """(blocks, first row of each block) of one shard, opened (and fetched) on first use."""
        store = self._context()
        with self._lock:  # the prefetch thread and the caller's may both read
            if index in self._open_shards:
                self._open_shards.move_to_end(index)
                return self._open_shards[index]
            entry = self.manifest["shards"][index]
            while self.remote and self._open_shards and self._open_bytes + entry["bytes"] > self._cache.limit:
                _, (_, _, old, size) = self._open_shards.popitem(last=False)  # unpinned: the fetch may evict it
                old.close()
                self._open_bytes -= size
            pinned = self._cache.pin(store, entry, self._infos[entry["file"]]) if self.remote else None
            path = pinned.path if pinned else None
            if pinned:
                check_shard_schema(store, entry, path)  # once per process: cheap, and the copy was written locally
            reader = arrow_blocks if self.manifest["format"] == "arrow" else hdf5_blocks
            blocks = reader(store, entry["file"], path)
            opened = (blocks, np.cumsum([0] + [len(block["image"]) for block in blocks])[:-1], pinned, entry["bytes"])
            self._open_shards[index] = opened
            self._open_bytes += entry["bytes"] if pinned else 0
            return opened

    # -- fetching ahead ----------------------------------------------------------------------------
    def follow(self, sampler) -> None:
        """Fetch the shards of the sampler's coming batches in a background thread (remote datasets only)."""
        self._follow = sampler
        if not self.remote or sampler is None or not self.prefetch or self._fetcher is not None:
            return
        self._context()
        self._stop = threading.Event()
        self._fetcher = threading.Thread(target=self._fetch_ahead, args=(copy.copy(sampler), self._stop),
                                         name="began-dist-fetch", daemon=True)
        self._fetcher.start()

    def upcoming_shards(self, cursor, position: tuple[int, int], count: int, batches: int = 256) -> list[int]:
        """The first `count` distinct shards the batches from `position` read, in the order they are first read."""
        order: dict[int, None] = {}
        for _ in range(batches):
            indices, position = cursor.batch_at(position)
            which = np.searchsorted(self._shard_starts, indices.numpy(), side="right") - 1
            _, first = np.unique(which, return_index=True)
            order.update((int(shard), None) for shard in which[np.sort(first)])
            if len(order) >= count:
                break
        return list(order)[:count]

    def _fetch_ahead(self, cursor, stop: threading.Event) -> None:
        """Keep the next `prefetch` shards the sampler reads downloading, `fetch_workers` at once."""
        def coming() -> list[tuple[int, dict, object]]:
            shards = self.upcoming_shards(cursor, self._follow.position, self.prefetch)
            return [(shard, self.manifest["shards"][shard], self._infos[self.manifest["shards"][shard]["file"]])
                    for shard in shards]

        self._cache.fetch_following(self._store, coming, len(self._shards()), stop)

    def _fetch_missing(self, shards) -> None:
        """Fetch a gather's shards not open yet at once, when they fit in the cache together."""
        missing = [self.manifest["shards"][int(shard)] for shard in shards if int(shard) not in self._open_shards]
        if len(missing) > 1 and sum(entry["bytes"] for entry in missing) + self._open_bytes <= self._cache.limit:
            self._cache.fetch_all(self._store, [(entry, self._infos[entry["file"]]) for entry in missing])

    def close(self) -> None:
        """Stop the fetcher and unpin every shard (they may be evicted from then on)."""
        self._stop.set()
        if self._fetcher is not None:
            self._fetcher.join(timeout=60)
            self._fetcher = None
        with self._lock:
            for _, _, pinned, _ in self._open_shards.values():
                if pinned:
                    pinned.close()
            self._open_shards.clear()
            self._open_bytes = 0

    def gather(self, name: str, indices, channels_first: bool = False) -> np.ndarray:
        """Column `name` ('image' or a label) of the images at `indices`, as one numpy array;
        `channels_first` turns (N, H, W, C) images into (N, C, H, W) in the same copy."""
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(index) and (index.min() < 0 or index.max() >= self.count):
            raise IndexError(f"index out of range 0..{self.count - 1}")
        m = self.manifest
        item_shape = (m["height"], m["width"], m["channels"]) if name == "image" else tuple(
            m.get("label_shapes", {}).get(name, ()))
        axes = (0, 3, 1, 2) if channels_first else tuple(range(1 + len(item_shape)))
        dtype = np.uint8 if name == "image" else np.dtype(m["labels"][name])
        out = np.empty((len(index), *(item_shape[a - 1] for a in axes[1:])), dtype)
        which = np.searchsorted(self._shard_starts, index, side="right") - 1
        shards = np.unique(which)
        if self.remote:
            self._context()
            self._fetch_missing(shards)
        for shard in shards:
            rows = np.nonzero(which == shard)[0]
            blocks, starts, _, _ = self._shard(int(shard))
            local = index[rows] - self._shard_starts[shard]
            inner = np.searchsorted(starts, local, side="right") - 1
            for block in np.unique(inner):
                picked = np.nonzero(inner == block)[0]
                out[rows[picked]] = blocks[block][name][local[picked] - starts[block]].transpose(axes)
        return out

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 (len(indices), C, H, W)."""
        return torch.from_numpy(self.gather("image", indices, channels_first=True))

    def label_batch(self, name: str, indices: torch.Tensor) -> torch.Tensor:
        """One label (e.g. the CRS `masks`) of the images at `indices`."""
        if name not in self.label_names:
            raise KeyError(f"{self.path}: no label {name!r}; it has {self.label_names}")
        return torch.from_numpy(self.gather(name, indices))

    def _small_labels(self) -> list[str]:
        return [name for name in self.label_names if len(self.manifest.get("label_shapes", {}).get(name, [])) <= 1]

    @property
    def label_width(self) -> Optional[int]:
        """Columns of `labels` (None: no scalar or vector labels), from the manifest: nothing is read."""
        shapes = self.manifest.get("label_shapes", {})
        return sum(int(np.prod(shapes.get(name, ()))) for name in self._small_labels()) or None

    @property
    def labels(self) -> Optional[torch.Tensor]:
        """(N, K) int64: the scalar and vector labels side by side, in manifest order (masks excluded)."""
        small = self._small_labels()
        if not small:
            return None
        if self._labels is None:
            everything = np.arange(self.count)
            columns = [self.gather(name, everything).reshape(self.count, -1).astype(np.int64) for name in small]
            self._labels = torch.from_numpy(np.concatenate(columns, axis=1))
        return self._labels

    def label_rows(self, indices: torch.Tensor) -> torch.Tensor:
        """labels[indices], gathering only these rows (remote: only their shards are fetched)."""
        if self._labels is not None or not self.remote:
            return self.labels[indices]
        columns = [self.gather(name, indices).reshape(len(indices), -1).astype(np.int64)
                   for name in self._small_labels()]
        return torch.from_numpy(np.concatenate(columns, axis=1))

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.batch(torch.tensor([index]))[0]

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        """DataLoader's batched fetch: one gather per batch instead of one per image."""
        return self.batch(torch.as_tensor(indices))
