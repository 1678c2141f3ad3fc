"""Run-directory storage: every read and write of a run directory goes through here.

A path is a local path or a URI (`s3://bucket/runs/x`, `gs://...`); the filesystem
behind it is `pyarrow.fs`, the layer Ray Train itself uses for its storage_path, so
a URI that Ray can write to, this module can too. Local paths behave as plain files
always did here; the semantics a run needs, per operation:

- `atomic_writer` / `write_bytes` / `write_text` / `save_torch`: whole-file writes
  that a reader sees complete or not at all. Locally: a temporary file in the same
  directory, fsynced, renamed over the final name, then the directory fsynced (POSIX
  rename is atomic within a filesystem). On an object store: the bytes are spooled to
  a local temporary file and uploaded in one put when the writer closes cleanly, so a
  failed write uploads nothing (an object store shows an object only once its upload
  completes).
- `append_text` (log.txt, stats.jsonl, metric-*.jsonl): locally an O_APPEND write
  per call, as a FileHandler does. Object stores cannot append: there it reads the
  object and writes it back whole (atomic, O(size) per call). That is correct but
  slow for a long log, so callers that append often hold an `Appender`, which on an
  object store keeps the content in memory and uploads it whole on `flush()` (called
  at a checkpoint and at the end of the run) and at most every 30 s.
- `BackgroundWriter`: a checkpoint's upload runs beside training (the bytes are
  serialised first, in the training thread), so a slow store does not stall steps.
- `load_torch`: `torch.load(..., weights_only=True)` on the CPU; no code runs from a
  checkpoint file.

TensorBoard's SummaryWriter writes its event files itself, so `LocalMirror` hands it a
local directory and, for a URI run directory, uploads the event files at the run's sync
points. (torch's SummaryWriter could write to s3:// itself through tensorboard's gfile,
but only with boto3 installed and S3_ENDPOINT set, and, having no append for S3, it
rewrites the whole event file on every flush; there is no gs://.)

This module imports only began_dist.uris (the supported schemes) and its own errors.py: it sits in the lowest
layer with config (docs/design.md).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any, Optional

import pyarrow.fs as pafs

from began_dist.storage.errors import (  # noqa: F401  (re-exported: storage.StorageError etc.)
    PERMANENT_WRITE_ERRNOS,
    StorageError,
    permanent_write_error,
    store_refusal,
    writing,
)
from began_dist.uris import uri_scheme


def is_uri(path: str) -> bool:
    """True for `scheme://...` of a supported scheme (uris.SCHEMES), False for a local path.

    Other schemes raise ValueError before pyarrow sees them (uris.py says why).
    """
    return bool(uri_scheme(str(path), "path"))


def is_local(path: str) -> bool:
    return not is_uri(path) or str(path).lower().startswith("file://")


def resolve(path: str) -> str:
    """A local path made absolute (~ expanded); a URI as given."""
    return str(path) if is_uri(path) else os.path.abspath(os.path.expanduser(str(path)))


def _split_query(uri: str) -> tuple[str, str]:
    """('s3://bucket/x', '?endpoint_override=...') of a URI; the query carries the store's options."""
    head, mark, query = str(uri).partition("?")
    return head.rstrip("/"), mark + query


def join(base: str, *parts: str) -> str:
    """Path joining for local paths (os.path.join) and URIs (forward slashes, before the `?query`)."""
    if is_uri(base):
        head, query = _split_query(base)
        return posixpath.join(head, *parts) + query
    return os.path.join(base, *parts)


def basename(path: str) -> str:
    if is_uri(path):
        return posixpath.basename(_split_query(path)[0])
    return os.path.basename(os.path.normpath(path))


def dirname(path: str) -> str:
    if is_uri(path):
        head, query = _split_query(path)
        return posixpath.dirname(head) + query
    return os.path.dirname(os.path.abspath(path))


def display(path: str) -> str:
    """`path` without a URI's `?query` (endpoint and options), for messages."""
    return _split_query(path)[0] if is_uri(path) else str(path)


def _local_path(path: str) -> str:
    """The OS path of a local path or file:// URI."""
    return str(path)[len("file://") :] if str(path).lower().startswith("file://") else str(path)


# Transient object-store errors (a timeout, a connection refused or reset, a 5xx, throttling) are
# retried inside the AWS SDK, per request, by its "standard" retry mode: before retry n it waits a
# random 0-1 s x 2^n, at most 20 s ("full jitter"). pyarrow's default is 3 attempts (about 1.5 s
# of waiting, often less): one blip of the network. 10 attempts wait 84 s on average and, in 99.9%
# of cases, at least 40 s (at most 110 s), so a partition of the host shorter than Ray's health
# check and the collective timeout (docs/distributed.md) is ridden through; a store unreachable
# for about two minutes fails the write. Refusals (403 AccessDenied, NoSuchBucket) are not retried
# by the SDK and end the run (`permanent_write_error`). connect_timeout stays at the SDK's 1 s and
# the read timeout at its 3 s (pyarrow's request_timeout applies on Windows and macOS only).
S3_MAX_ATTEMPTS = 10


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or URI; S3 with S3_MAX_ATTEMPTS attempts."""
    if is_local(path):
        return pafs.LocalFileSystem(), os.path.abspath(_local_path(path))
    fs, inner = pafs.FileSystem.from_uri(str(path))
    if isinstance(fs, pafs.S3FileSystem):
        # from_uri takes no retry strategy; the options it parsed from the URI are the ones pickling
        # rebuilds the filesystem from (S3FileSystem.__reduce__), so the same store, with more attempts.
        options = fs.__reduce__()[1][0]
        fs = pafs.S3FileSystem(**options, retry_strategy=pafs.AwsStandardS3RetryStrategy(S3_MAX_ATTEMPTS))
    return fs, inner


# -- queries -------------------------------------------------------------------------------
def _info(path: str) -> pafs.FileInfo:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner)


def exists(path: str) -> bool:
    return _info(path).type != pafs.FileType.NotFound


def isfile(path: str) -> bool:
    return _info(path).type == pafs.FileType.File


def isdir(path: str) -> bool:
    return _info(path).type == pafs.FileType.Directory


def listdir(path: str) -> list[str]:
    """Names of the entries directly in `path` (sorted); [] when it does not exist."""
    fs, inner = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return sorted(info.base_name for info in infos)


def glob(directory: str, pattern: str) -> list[str]:
    """Full paths of the entries of `directory` whose name matches the shell pattern, sorted."""
    return [join(directory, name) for name in listdir(directory) if fnmatch.fnmatchcase(name, pattern)]


# -- changes -------------------------------------------------------------------------------
def makedirs(path: str) -> None:
    """Create `path` and its parents (a no-op on object stores without directories)."""
    if is_local(path):
        os.makedirs(_local_path(path), exist_ok=True)
        return
    with writing(path):  # an object store may refuse the directory's marker object
        fs, inner = filesystem(path)
        fs.create_dir(inner, recursive=True)


def delete(path: str) -> None:
    """Remove a file, or a directory with its contents; a missing path is not an error."""
    fs, inner = filesystem(path)
    kind = fs.get_file_info(inner).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(inner)
    elif kind == pafs.FileType.File:
        fs.delete_file(inner)


def move(source: str, target: str) -> str:
    """Rename `source` to `target` (its directory created); a copy then delete on object stores."""
    if is_local(source) and is_local(target):
        os.makedirs(os.path.dirname(os.path.abspath(_local_path(target))), exist_ok=True)
        os.replace(_local_path(source), _local_path(target))
        return target
    makedirs(dirname(target))
    fs, inner = filesystem(source)
    fs.move(inner, filesystem(target)[1])
    return target


# -- reads ---------------------------------------------------------------------------------
def read_bytes(path: str) -> bytes:
    if is_local(path):
        with open(_local_path(path), "rb") as handle:
            return handle.read()
    fs, inner = filesystem(path)
    try:
        with fs.open_input_stream(inner) as stream:
            return stream.read()
    except FileNotFoundError:
        raise
    except OSError as error:
        if not exists(path):
            raise FileNotFoundError(f"{path}: no such file") from error
        raise


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def open_binary(path: str) -> IO[bytes]:
    """A readable binary file object (a local file, or the object's bytes in memory)."""
    if is_local(path):
        return open(_local_path(path), "rb")
    return io.BytesIO(read_bytes(path))


def load_torch(path: str) -> Any:
    """torch.load on the CPU with weights_only=True: no arbitrary code runs from the file."""
    import torch  # deferred: commands that never load a checkpoint start faster without it

    with open_binary(path) as handle:
        return torch.load(handle, map_location="cpu", weights_only=True)


# -- writes --------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_writer(path: str) -> Iterator[IO[bytes]]:
    """A binary file whose content appears at `path` only if the block ends without an exception.

    The temporary file is `.NAME.XXXX.tmp` beside `path` (locally) or in the system's
    temporary directory (object stores: uploaded in one put on success).
    """
    if is_local(path):
        with writing(path):  # a full disk or a file-size limit: StorageError naming `path`, no temp file left
            final = os.path.abspath(_local_path(path))
            directory = os.path.dirname(final)
            os.makedirs(directory, exist_ok=True)
            handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(final)}.", suffix=".tmp", dir=directory)
            try:
                with os.fdopen(handle, "wb") as file:
                    yield file
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(tmp, final)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            _fsync_dir(directory)
        return
    with tempfile.TemporaryFile() as spool:
        yield spool
        spool.flush()
        spool.seek(0)
        with writing(path):  # a store that refuses the write: StorageError naming `path`
            fs, inner = filesystem(path)
            with fs.open_output_stream(inner) as stream:
                shutil.copyfileobj(spool, stream, 8 << 20)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str, data: bytes) -> str:
    with atomic_writer(path) as handle:
        handle.write(data)
    return path


def write_text(path: str, text: str) -> str:
    return write_bytes(path, text.encode("utf-8"))


def save_torch(obj: Any, path: str) -> str:
    """torch.save `obj` to `path` atomically."""
    import torch

    with atomic_writer(path) as handle:
        torch.save(obj, handle)
    return path


def append_text(path: str, text: str) -> None:
    """Append `text` to `path` (created if missing). Object stores: read, then rewrite whole."""
    if is_local(path):
        local = _local_path(path)
        with writing(path):
            os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
            with open(local, "a", encoding="utf-8") as handle:
                handle.write(text)
        return
    old = read_bytes(path) if exists(path) else b""
    write_bytes(path, old + text.encode("utf-8"))


def truncate_jsonl(path: str, last_step: int) -> Optional[int]:
    """Drop the lines of a {"step": ...} JSONL file after `last_step` (and a torn last line), atomically.

    Returns the number of lines kept, or None when the file does not exist.
    """
    import json

    if not exists(path):
        return None
    kept = []
    for line in read_text(path).splitlines(keepends=True):
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, KeyError):
            continue
    write_text(path, "".join(kept))
    return len(kept)


_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # atomic_writer's mkstemp names: .NAME.XXXXXXXX.tmp


def remove_stale_temps(directory: str) -> list[str]:
    """Delete the temporary files a killed atomic_writer left in a local `directory`; their paths.

    Only atomic_writer's own pattern is touched, and only where no writer of this run is
    active yet (the start of a run).
    """
    if not is_local(directory):
        return []  # object stores: a failed write uploads nothing
    removed = []
    for path in glob(directory, ".*.tmp"):
        if _TEMP.match(basename(path)) and isfile(path):
            os.unlink(_local_path(path))
            removed.append(path)
    return removed


# Re-exported so `storage.Appender` etc. keep working for every caller; imported last because
# sync.py builds on the functions above.
from began_dist.storage.sync import Appender, BackgroundWriter, LocalMirror, local_dir  # noqa: E402,F401
