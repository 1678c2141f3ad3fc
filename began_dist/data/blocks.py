"""Blocks: (rows, ...) numpy views of one shard's images and labels, by global row.

Local Arrow shards are memory-mapped and read zero-copy (one block per record batch);
local HDF5 shards through memory maps of their uncompressed chunks (one block per chunk),
opened so that they read only themselves (began_dist/data/hdf5.py). A remote shard is read
from its node-cache copy (`path`), or, for `prepare --verify`, from the store itself.
The sharded reader (began_dist/data/reader.py) builds its index over these blocks.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Optional

import h5py
import numpy as np
import pyarrow as pa

from began_dist.data import hdf5

if TYPE_CHECKING:
    from began_dist.data.reader import DatasetDir


def _local_path(store: DatasetDir, file: str, path: Optional[str]) -> Optional[str]:
    """Where the shard's bytes are on this node: `path` (a cached copy), the local file, or None (remote)."""
    return path or (store.location(file) if store.local else None)


def arrow_source(store: DatasetDir, file: str, path: Optional[str] = None):
    local = _local_path(store, file, path)
    if local:
        return pa.memory_map(local, "r")
    return store.fs.open_input_file(store.location(file))  # prepare --verify of a remote shard: random access


def hdf5_file(store: DatasetDir, file: str, path: Optional[str] = None) -> h5py.File:
    local = _local_path(store, file, path)
    return hdf5.open_file(local or io.BytesIO(store.read_bytes(file)), store.name(file))


def arrow_blocks(store: DatasetDir, file: str, path: Optional[str] = None) -> list[dict[str, np.ndarray]]:
    """One block per record batch: zero-copy views of the memory-mapped file (`path`: a cached copy)."""
    m = store.manifest
    image_shape, shapes = (m["height"], m["width"], m["channels"]), m.get("label_shapes", {})
    reader = pa.ipc.open_file(arrow_source(store, file, path))
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


def hdf5_blocks(store: DatasetDir, file: str, path: Optional[str] = None) -> list[dict[str, np.ndarray]]:
    """One block per HDF5 chunk of images; labels sliced to match (`path`: a cached copy)."""
    where, local = store.name(file), _local_path(store, file, path)
    with hdf5_file(store, file, path) as handle:
        mapped = np.memmap(local, np.uint8, "r") if local else None
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
