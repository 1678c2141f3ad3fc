"""The dataset directory format: `manifest.json` plus N shard files (Arrow IPC or HDF5).

    OUT/manifest.json        written last, atomically: it only ever names complete shards
    OUT/shard-00000.arrow    Arrow IPC file: column `image` = fixed_size_list<uint8>[H*W*C]
                             (row-major H, W, C), one column per label
    OUT/shard-00000.h5       HDF5: dataset `images` (N, H, W, C) uint8, chunked, uncompressed;
                             one dataset per label

Labels are per-image scalars or fixed-shape arrays (`label_shapes`, e.g. the CRS masks);
both formats open with plain pyarrow / h5py. Checksums are sha256 of whole shard files.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import h5py
import numpy as np
import pyarrow as pa

from began_dist.data import hdf5
from began_dist.data.dataset import DataError

FORMAT_VERSION = 1
FORMATS = {"arrow": ".arrow", "hdf5": ".h5"}
MANIFEST = "manifest.json"
REQUIRED_KEYS = ("format_version", "format", "height", "width", "channels", "dtype", "labels", "count", "shards")
ROWS_PER_RECORD_BATCH = 1024  # Arrow record batch size: big enough to amortise, small enough to stream
IMAGES_PER_HDF5_CHUNK = 64  # HDF5 chunk = 64 whole images, uncompressed, so chunks can be memory-mapped


def shard_name(index: int, fmt: str) -> str:
    return f"shard-{index:05d}{FORMATS[fmt]}"


def sha256_file(path: str, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


# -- writers -------------------------------------------------------------------------------
def write_shard(path: str, fmt: str, images: np.ndarray, labels: dict[str, np.ndarray]) -> dict[str, Any]:
    """Write one complete shard (to a temp name, then rename) and return its manifest entry."""
    assert images.dtype == np.uint8 and images.ndim == 4, (images.dtype, images.shape)
    for name, values in labels.items():
        assert len(values) == len(images), f"label {name}: {len(values)} values for {len(images)} images"
    tmp = f"{path}.tmp"
    (_write_arrow if fmt == "arrow" else _write_hdf5)(tmp, images, labels)
    _fsync_file(tmp)
    os.replace(tmp, path)
    return {"file": os.path.basename(path), "count": len(images), "bytes": os.path.getsize(path),
            "sha256": sha256_file(path)}


def arrow_schema(height: int, width: int, channels: int, labels: dict[str, str], shapes: dict) -> pa.Schema:
    fields = [pa.field("image", pa.list_(pa.uint8(), height * width * channels))]
    for name, dtype in labels.items():
        item = pa.from_numpy_dtype(np.dtype(dtype))
        size = int(np.prod(shapes.get(name, ())))
        fields.append(pa.field(name, pa.list_(item, size) if shapes.get(name) else item))
    return pa.schema(fields)


def _write_arrow(path: str, images: np.ndarray, labels: dict[str, np.ndarray]) -> None:
    n, h, w, c = images.shape
    schema = arrow_schema(h, w, c, label_dtypes(labels), label_shapes(labels))
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for start in range(0, n, ROWS_PER_RECORD_BATCH):
            stop = min(n, start + ROWS_PER_RECORD_BATCH)
            columns = [_fixed_list(images[start:stop])] + [_column(values[start:stop]) for values in labels.values()]
            writer.write_batch(pa.record_batch(columns, schema=schema))


def _fixed_list(rows: np.ndarray) -> pa.Array:
    flat = np.ascontiguousarray(rows).reshape(len(rows), -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def _column(values: np.ndarray) -> pa.Array:
    return pa.array(values) if values.ndim == 1 else _fixed_list(values)


def _write_hdf5(path: str, images: np.ndarray, labels: dict[str, np.ndarray]) -> None:
    n = len(images)
    with h5py.File(path, "w") as handle:
        chunk = (max(1, min(n, IMAGES_PER_HDF5_CHUNK)), *images.shape[1:])
        handle.create_dataset("images", data=images, chunks=chunk)
        for name, values in labels.items():
            handle.create_dataset(name, data=values)


def label_dtypes(labels: dict[str, np.ndarray]) -> dict[str, str]:
    return {name: np.dtype(values.dtype).name for name, values in labels.items()}


def label_shapes(labels: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Per-image shapes of the labels that are arrays rather than scalars."""
    return {name: list(values.shape[1:]) for name, values in labels.items() if values.ndim > 1}


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


# -- manifest ------------------------------------------------------------------------------
def write_manifest(out_dir: str, manifest: dict[str, Any]) -> str:
    """Atomically write `out_dir/manifest.json` (temp file, fsync, rename): the dataset's commit point."""
    path = os.path.join(out_dir, MANIFEST)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(manifest, handle, indent=1, ensure_ascii=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def parse_manifest(text: str, where: str) -> dict[str, Any]:
    """The manifest's dict, checked for the keys and values the reader relies on."""
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: not valid JSON ({error})") from None
    missing = [key for key in REQUIRED_KEYS if key not in manifest] if isinstance(manifest, dict) else REQUIRED_KEYS
    if missing:
        raise DataError(f"{where}: not a dataset manifest (missing {', '.join(missing)})")
    if manifest["format_version"] != FORMAT_VERSION:
        raise DataError(f"{where}: format_version {manifest['format_version']}, this reader knows {FORMAT_VERSION}")
    if manifest["format"] not in FORMATS or manifest["dtype"] != "uint8":
        raise DataError(f"{where}: format {manifest['format']!r} / dtype {manifest['dtype']!r} not supported")
    if sum(shard["count"] for shard in manifest["shards"]) != manifest["count"]:
        raise DataError(f"{where}: the shard counts do not add up to count={manifest['count']}")
    return manifest


def check_arrow_schema(schema: pa.Schema, manifest: dict, where: str) -> None:
    expected = arrow_schema(
        manifest["height"], manifest["width"], manifest["channels"], manifest["labels"],
        manifest.get("label_shapes", {}),
    )
    if not schema.remove_metadata().equals(expected):
        raise DataError(f"{where}: schema does not match the manifest: found {schema}, expected {expected}")


def check_hdf5_layout(handle: h5py.File, manifest: dict, count: int, where: str) -> None:
    shape = (count, manifest["height"], manifest["width"], manifest["channels"])
    images = hdf5.dataset(handle, "images", where)
    if images is None or images.shape != shape or images.dtype != np.uint8:
        found = None if images is None else (getattr(images, "shape", None), getattr(images, "dtype", None))
        raise DataError(f"{where}: schema does not match the manifest: images {found}, expected {shape} uint8")
    for name, dtype in manifest["labels"].items():
        want = (count, *manifest.get("label_shapes", {}).get(name, []))
        found = hdf5.dataset(handle, name, where)
        if found is None or found.shape != want or found.dtype != np.dtype(dtype):
            raise DataError(f"{where}: schema does not match the manifest: label {name!r} is not {want} {dtype}")
