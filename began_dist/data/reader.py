"""The sharded reader: a map-style dataset over a prepared dataset directory.

Construction checks everything a run depends on before training starts: the
manifest, that every shard exists with the manifest's size and sha256, and that
its schema and row count match the manifest. Any failure is a DataError naming
the file (exit 2), so a run never silently trains on fewer images.

Files are opened lazily, in the process that reads (never inside something
pickled or forked): local Arrow shards are memory-mapped and read zero-copy, local
HDF5 shards through memory maps of their uncompressed chunks. `data.path` may also
be a file://, s3:// or gs:// URI (other schemes are refused before pyarrow.fs sees
them); remote shards are read into memory once per process. HDF5 shards are opened
so that they read only themselves (began_dist/data/hdf5.py).
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Optional

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch

from began_dist import uris
from began_dist.data import format as fmt
from began_dist.data import hdf5
from began_dist.data.dataset import DataError, ImageDataset

_VERIFIED: set[tuple] = set()  # (shard path, size, mtime_ns, sha256) already hashed in this process


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
        self.manifest = fmt.parse_manifest(self.read_text(fmt.MANIFEST), self.name(fmt.MANIFEST))

    def location(self, file: str) -> str:
        return f"{self.base.rstrip('/')}/{file}"

    def name(self, file: str) -> str:
        """How errors name a file: the path or URI the user gave, joined with the file."""
        return f"{self.path.rstrip('/')}/{file}"

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
        return digest.hexdigest()

    def read_bytes(self, file: str) -> bytes:
        with self.fs.open_input_file(self.location(file)) as handle:
            return handle.read()


# -- integrity ---------------------------------------------------------------------------------
def shard_status(store: DatasetDir, entry: dict, checksums: bool) -> str:
    """'ok', or what is wrong with one shard: missing, truncated/grown, checksum mismatch, schema."""
    info = store.info(entry["file"])
    if info.type != pafs.FileType.File:
        return "missing"
    if info.size != entry["bytes"]:
        return f"size {info.size} bytes, the manifest says {entry['bytes']} (truncated or replaced)"
    key = (store.location(entry["file"]), info.size, info.mtime_ns, entry["sha256"])
    if checksums and key not in _VERIFIED:
        if store.sha256(entry["file"]) != entry["sha256"]:
            return "checksum mismatch (corrupt)"
        _VERIFIED.add(key)
    try:
        check_shard_schema(store, entry)
    except DataError as error:
        return str(error).removeprefix(f"{store.name(entry['file'])}: ")
    return "ok"


def check_shard_schema(store: DatasetDir, entry: dict) -> None:
    manifest, where = store.manifest, store.name(entry["file"])
    try:
        if manifest["format"] == "arrow":
            reader = pa.ipc.open_file(_arrow_source(store, entry["file"]))
            fmt.check_arrow_schema(reader.schema, manifest, where)
            rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        else:
            with _hdf5_file(store, entry["file"]) as handle:
                fmt.check_hdf5_layout(handle, manifest, entry["count"], where)
                rows = handle["images"].shape[0]
    except (pa.ArrowException, OSError, KeyError) as error:
        raise DataError(f"{where}: unreadable shard ({error})") from None
    if rows != entry["count"]:
        raise DataError(f"{where}: {rows} images, the manifest says {entry['count']}")


def verify_shards(path: str) -> list[dict]:
    """Every shard of the manifest with its status after a full checksum (`prepare --verify`)."""
    store = DatasetDir(path, key="prepare --verify")
    return [{**entry, "status": shard_status(store, entry, checksums=True)} for entry in store.manifest["shards"]]


def _arrow_source(store: DatasetDir, file: str):
    if store.local:
        return pa.memory_map(store.location(file), "r")
    return store.fs.open_input_file(store.location(file))  # random access: reads what is asked for


def _hdf5_file(store: DatasetDir, file: str) -> h5py.File:
    source = store.location(file) if store.local else io.BytesIO(store.read_bytes(file))
    return hdf5.open_file(source, store.name(file))


# -- blocks: (rows, ...) numpy views of the shards, by global row ------------------------------------
def arrow_blocks(store: DatasetDir, file: str) -> list[dict[str, np.ndarray]]:
    """One block per record batch: zero-copy views of the memory-mapped file."""
    m = store.manifest
    image_shape, shapes = (m["height"], m["width"], m["channels"]), m.get("label_shapes", {})
    reader = pa.ipc.open_file(_arrow_source(store, file))
    blocks = []
    for i in range(reader.num_record_batches):
        batch = reader.get_batch(i)
        block = {"image": _column_view(batch.column("image"), image_shape)}
        for name in m["labels"]:
            block[name] = _column_view(batch.column(name), tuple(shapes.get(name, ())))
        blocks.append(block)
    return blocks


def _column_view(column: pa.Array, item_shape: tuple) -> np.ndarray:
    values = column.flatten() if pa.types.is_fixed_size_list(column.type) else column
    return values.to_numpy(zero_copy_only=True).reshape(len(column), *item_shape)


def hdf5_blocks(store: DatasetDir, file: str) -> list[dict[str, np.ndarray]]:
    """One block per HDF5 chunk of images; labels sliced to match."""
    where = store.name(file)
    with _hdf5_file(store, file) as handle:
        mapped = np.memmap(store.location(file), np.uint8, "r") if store.local else None
        images = hdf5.dataset(handle, "images", where, required=True)
        labels = {name: _hdf5_array(hdf5.dataset(handle, name, where, required=True), mapped)
                  for name in store.manifest["labels"]}
        pieces = _hdf5_image_pieces(images, mapped)
    return [{"image": view, **{n: v[start : start + len(view)] for n, v in labels.items()}} for start, view in pieces]


def _hdf5_image_pieces(images: h5py.Dataset, mapped: Optional[np.memmap]) -> list[tuple[int, np.ndarray]]:
    """(first row, view) per chunk; memory maps when the chunks are stored raw, else one in-memory read."""
    n, item = images.shape[0], images.shape[1:]
    item_bytes = int(np.prod(item))
    if mapped is None or images.compression or images.chunks is None or images.chunks[1:] != item or n == 0:
        return [(0, _hdf5_array(images, mapped))]
    pieces = []
    for i in range(images.id.get_num_chunks()):
        chunk = images.id.get_chunk_info(i)
        start = chunk.chunk_offset[0]
        rows = min(images.chunks[0], n - start)
        if chunk.filter_mask or chunk.size != images.chunks[0] * item_bytes:
            return [(0, images[()])]
        view = mapped[chunk.byte_offset : chunk.byte_offset + rows * item_bytes].reshape(rows, *item)
        pieces.append((start, view))
    return sorted(pieces, key=lambda piece: piece[0])


def _hdf5_array(dataset: h5py.Dataset, mapped: Optional[np.memmap]) -> np.ndarray:
    offset = dataset.id.get_offset() if dataset.chunks is None and mapped is not None else None
    if offset is None:
        return dataset[()]
    count = int(np.prod(dataset.shape)) * dataset.dtype.itemsize
    return mapped[offset : offset + count].view(dataset.dtype).reshape(dataset.shape)


# -- the dataset -------------------------------------------------------------------------------
class ShardedDataset(ImageDataset):
    """The images (and labels) of a prepared dataset directory, by global index."""

    def __init__(self, path: str, limit: int = 0, checksums: bool = True):
        self.path = path
        store = DatasetDir(path)
        manifest = self.manifest = store.manifest
        for entry in manifest["shards"]:
            status = shard_status(store, entry, checksums)
            if status != "ok":
                raise DataError(f"{store.name(entry['file'])}: {status}; re-run `began-dist prepare` for {path}")
        if manifest["height"] != manifest["width"]:
            raise DataError(f"{store.name(fmt.MANIFEST)}: images must be square, not {manifest['height']}x"
                            f"{manifest['width']}")
        self.image_size, self.channels = manifest["height"], manifest["channels"]
        self.count = min(limit, manifest["count"]) if limit else manifest["count"]
        self.label_names = list(manifest["labels"])
        self._blocks: Optional[list[dict[str, np.ndarray]]] = None
        self._starts: Optional[np.ndarray] = None
        self._pid: Optional[int] = None
        self._labels: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.count

    def __getstate__(self) -> dict:
        # open files and memory maps stay in the process that opened them
        return {**self.__dict__, "_blocks": None, "_starts": None, "_pid": None}

    def _open(self) -> list[dict[str, np.ndarray]]:
        if self._blocks is None or self._pid != os.getpid():
            store = DatasetDir(self.path)
            reader = arrow_blocks if self.manifest["format"] == "arrow" else hdf5_blocks
            blocks = [block for entry in self.manifest["shards"] if entry["count"] for block in
                      reader(store, entry["file"])]
            self._starts = np.cumsum([0] + [len(block["image"]) for block in blocks])[:-1]
            self._blocks, self._pid = blocks, os.getpid()
        return self._blocks

    def gather(self, name: str, indices, channels_first: bool = False) -> np.ndarray:
        """Column `name` ('image' or a label) of the images at `indices`, as one numpy array;
        `channels_first` turns (N, H, W, C) images into (N, C, H, W) in the same copy."""
        blocks, index = self._open(), np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(index) and (index.min() < 0 or index.max() >= self.count):
            raise IndexError(f"index out of range 0..{self.count - 1}")
        which = np.searchsorted(self._starts, index, side="right") - 1
        item_shape = blocks[0][name].shape[1:]
        axes = (0, 3, 1, 2) if channels_first else tuple(range(1 + len(item_shape)))
        out = np.empty((len(index), *(item_shape[a - 1] for a in axes[1:])), blocks[0][name].dtype)
        for block in np.unique(which):
            rows = np.nonzero(which == block)[0]
            out[rows] = blocks[block][name][index[rows] - self._starts[block]].transpose(axes)
        return out

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 (len(indices), C, H, W)."""
        return torch.from_numpy(self.gather("image", indices, channels_first=True))

    def label_batch(self, name: str, indices: torch.Tensor) -> torch.Tensor:
        """One label (e.g. the CRS `masks`) of the images at `indices`."""
        if name not in self.label_names:
            raise KeyError(f"{self.path}: no label {name!r}; it has {self.label_names}")
        return torch.from_numpy(self.gather(name, indices))

    @property
    def labels(self) -> Optional[torch.Tensor]:
        """(N, K) int64: the scalar and vector labels side by side, in manifest order (masks excluded)."""
        small = [name for name in self.label_names if len(self.manifest.get("label_shapes", {}).get(name, [])) <= 1]
        if not small:
            return None
        if self._labels is None:
            everything = np.arange(self.count)
            columns = [self.gather(name, everything).reshape(self.count, -1).astype(np.int64) for name in small]
            self._labels = torch.from_numpy(np.concatenate(columns, axis=1))
        return self._labels

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.batch(torch.tensor([index]))[0]

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        """DataLoader's batched fetch: one gather per batch instead of one per image."""
        return self.batch(torch.as_tensor(indices))
