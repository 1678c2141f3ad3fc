"""Data sets distributed as files: the CIFAR-10 python archive (restricted unpickler), a flat
HDF5 file of uint8 rows (`hdf5-flat`), the Fashion-MNIST IDX files of Debian's dataset-fashion-mnist."""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import tarfile

import numpy as np

from began_dist.data import hdf5
from began_dist.data.dataset import DataError

# -- CIFAR-10 python archive -------------------------------------------------------------
CIFAR_MEMBERS = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]  # split 0 = train, 1 = test
CIFAR_MEMBER_BYTES = 32 << 20  # a CIFAR-10 batch pickle is 31.0 MB (10,000 x 3,072 pixel bytes, labels, names)
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _numpy_global(module: str, name: str):
    import importlib

    return getattr(importlib.import_module(module), name)


class RestrictedUnpickler(pickle.Unpickler):
    """Admits only what CIFAR's pickles contain: numpy array reconstruction, dtype and ndarray
    (plus `_codecs.encode`, which is how Python 3 writes bytes into protocol-2 pickles).

    Any other global (os.system, builtins.eval, ...) is refused before it is looked up,
    so nothing in a hostile file runs.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
        ("_codecs", "encode"): ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return _numpy_global(*self.ALLOWED[module, name])


def _load_cifar_member(archive: tarfile.TarFile, member: tarfile.TarInfo, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = archive.extractfile(member).read()
        batch = RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, OSError) as error:
        raise DataError(f"{where}: refused to unpickle {member.name}: {error}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{where}: {member.name} is not a CIFAR-10 batch (no data/labels)")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"], dtype=np.int64)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (len(labels), 3 * 32 * 32):
        raise DataError(f"{where}: {member.name}: data is not N x 3072 uint8")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar10(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`cifar-10-python.tar.gz` as distributed -> (N, 32, 32, 3) images, class ids, split (0 train, 1 test)."""
    try:
        with tarfile.open(path, "r:*") as archive:
            members = {os.path.basename(m.name): m for m in archive.getmembers() if m.isfile()}
            missing = [name for name in CIFAR_MEMBERS if name not in members]
            if missing:
                raise DataError(f"{path}: not the CIFAR-10 python archive (no {', '.join(missing)})")
            for name in CIFAR_MEMBERS:  # sizes come from the tar headers: refuse before reading a byte
                if members[name].size > CIFAR_MEMBER_BYTES:
                    raise DataError(
                        f"{path}: member {members[name].name} is {members[name].size:,} bytes, more "
                        f"than a CIFAR-10 batch can be ({CIFAR_MEMBER_BYTES:,}); refused unread"
                    )
            parts = [_load_cifar_member(archive, members[name], path) for name in CIFAR_MEMBERS]
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(f"{path}: unreadable archive: {error}") from None
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    split = np.concatenate(
        [np.full(len(lb), int(name == "test_batch"), np.uint8) for (_, lb), name in zip(parts, CIFAR_MEMBERS)]
    )
    return np.ascontiguousarray(images), labels, split


# -- artcg/BEGAN's flat HDF5 (seed 001, docs/design.md) -----------------------------------
def hdf5_flat_shape(path: str, source_size: int) -> tuple[int, int, int]:
    """(count, H, C) of a file with dataset `images` of N x H*W*C flattened uint8 rows."""
    try:
        with hdf5.open_file(path, path) as handle:
            images = hdf5.dataset(handle, "images", path)
            if images is None or images.ndim != 2 or images.dtype != np.uint8:
                raise DataError(f"{path}: expected a dataset 'images' of N x H*W*C uint8 rows")
            count, row = images.shape
    except (OSError, KeyError) as error:
        raise DataError(f"{path}: unreadable HDF5 file: {error}") from None
    side = source_size or int(round(math.sqrt(row / 3)))
    channels = row // (side * side)
    if channels not in (1, 3) or channels * side * side != row:
        raise DataError(f"{path}: rows of {row} bytes are not H*H*1 or H*H*3 with H={side}; give --source-size H")
    return count, side, channels


def read_hdf5_flat(path: str, start: int, stop: int, side: int, channels: int) -> np.ndarray:
    try:
        with hdf5.open_file(path, path) as handle:
            rows = hdf5.dataset(handle, "images", path, required=True)[start:stop]
    except (OSError, KeyError) as error:
        raise DataError(f"{path}: unreadable rows {start}..{stop}: {error}") from None
    return rows.reshape(-1, side, side, channels)


# -- Fashion-MNIST IDX files (Debian dataset-fashion-mnist) -------------------------------
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_SPLITS = ("train", "t10k")  # split 0 = train, 1 = test
IDX_MAX_BYTES = 1 << 30  # refuse an IDX header promising more data than this
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """An IDX file (optionally .gz): magic 0 0 dtype ndim, big-endian int32 dims, then the data.

    Only what the header promises is decompressed, and a promise above IDX_MAX_BYTES is refused
    unread: a small .gz can expand to any size (Fashion-MNIST's largest file is 47 MB).
    """
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as handle:
            head = handle.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_DTYPES:
                raise DataError(f"{path}: not an IDX file (bad magic)")
            ndim, dtype = head[3], np.dtype(IDX_DTYPES[head[2]])
            dims = np.frombuffer(handle.read(4 * ndim), ">i4")
            if len(dims) != ndim or (dims < 0).any():
                raise DataError(f"{path}: not an IDX file (bad dimensions)")
            expected = int(np.prod(dims.astype(object))) * dtype.itemsize
            if expected > IDX_MAX_BYTES:
                raise DataError(
                    f"{path}: the header promises {expected:,} bytes of data, more than "
                    f"{IDX_MAX_BYTES:,}; refused unread"
                )
            raw = handle.read(expected + 1)
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: unreadable IDX file: {error}") from None
    if len(raw) > expected:
        raise DataError(f"{path}: more data than the {expected} bytes the header promises")
    if len(raw) < expected:
        raise DataError(f"{path}: {len(raw)} bytes of data, the header promises {expected} (truncated?)")
    return np.frombuffer(raw, dtype).reshape(dims.tolist())


def _idx_file(root: str, stem: str) -> str:
    for name in (f"{stem}.gz", stem):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    raise DataError(f"fashion-mnist: no {stem}[.gz] in {root} (apt-get install dataset-fashion-mnist)")


def read_fashion_mnist(root: str = FASHION_ROOT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 28, 28, 1) images, class ids and split (0 train, 1 test) of the train then t10k files."""
    images, labels, split = [], [], []
    for index, name in enumerate(FASHION_SPLITS):
        part = read_idx(_idx_file(root, f"{name}-images-idx3-ubyte"))
        classes = read_idx(_idx_file(root, f"{name}-labels-idx1-ubyte"))
        if part.ndim != 3 or len(part) != len(classes):
            raise DataError(f"fashion-mnist: {name} images {part.shape} do not match {len(classes)} labels")
        images.append(part)
        labels.append(classes.astype(np.int64))
        split.append(np.full(len(part), index, np.uint8))
    return np.concatenate(images)[..., None], np.concatenate(labels), np.concatenate(split)
