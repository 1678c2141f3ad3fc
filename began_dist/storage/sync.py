"""Helpers for tools and callers that write a run directory often or by themselves.

`Appender` (log.txt, stats.jsonl on an object store), `LocalMirror` (TensorBoard's event
files), `BackgroundWriter` (a checkpoint's upload beside training) and `local_dir`. They sit
on the core operations of `began_dist.storage` (docs/design.md, the storage layer), which
re-exports them, so callers keep writing `storage.Appender`.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from typing import Optional

from began_dist.storage import _local_path, append_text, exists, is_local, join, read_bytes, write_bytes


class Appender:
    """Appends to one file (log.txt, stats.jsonl).

    Locally every `write` lands at once (as before: a crash loses nothing written). An object
    store cannot append, so there the content is held here (the object's content when this
    Appender was made, plus what was written since) and uploaded whole, atomically, on
    `flush` and at most every `upload_every_s` seconds from `write`; a crash loses what was
    written since the last upload (the run's checkpoints flush it, so a resume cuts back to
    the checkpoint's step anyway).
    """

    def __init__(self, path: str, upload_every_s: float = 30.0):
        self.path = path
        self.remote = not is_local(path)
        self.upload_every_s = upload_every_s
        self._lock = threading.Lock()
        if self.remote:
            self._content = bytearray(read_bytes(path) if exists(path) else b"")
            self._dirty, self._uploaded_at = False, time.monotonic()

    def write(self, text: str) -> None:
        if not self.remote:
            append_text(self.path, text)
            return
        with self._lock:
            self._content += text.encode("utf-8")
            self._dirty = True
        if time.monotonic() - self._uploaded_at >= self.upload_every_s:
            self.flush()

    def flush(self) -> None:
        """Make every write durable at `path` (a no-op locally: writes are not buffered)."""
        if not self.remote:
            return
        with self._lock:
            if not self._dirty:
                return
            data, self._dirty = bytes(self._content), False
        write_bytes(self.path, data)
        self._uploaded_at = time.monotonic()


class LocalMirror:
    """A local directory for a tool that writes its own files (TensorBoard's SummaryWriter).

    For a local `path` it is `path` itself. For a URI it is a node-local temporary directory
    whose files `sync()` uploads to `path` (each file whole and atomic, only those that changed
    since the last sync), so `tensorboard --logdir` on a copy, or on the URI where TensorBoard
    reads the store, follows the run at the caller's sync points.
    """

    def __init__(self, path: str):
        self.path = path
        if is_local(path):
            self.local = local_dir(path)
            self._temp = None
        else:
            self._temp = tempfile.TemporaryDirectory(prefix="began-mirror-")
            self.local = self._temp.name
        self._sizes: dict[str, int] = {}

    def sync(self) -> None:
        if self._temp is None:
            return
        for root, _, files in os.walk(self.local):
            for name in files:
                local = os.path.join(root, name)
                size = os.path.getsize(local)
                if self._sizes.get(local) == size:
                    continue
                relative = os.path.relpath(local, self.local).replace(os.sep, "/")
                with open(local, "rb") as handle:
                    write_bytes(join(self.path, relative), handle.read())
                self._sizes[local] = size

    def close(self) -> None:
        try:
            self.sync()
        finally:
            if self._temp is not None:
                self._temp.cleanup()


class BackgroundWriter:
    """Whole-file writes done by one background thread, one at a time, in order.

    The caller hands over bytes already serialised (the consistent snapshot), so training goes
    on while the upload runs; `submit` waits only for the previous write to finish (at most one
    in flight). A write's error is re-raised in the caller by `wait` and `submit`, or, without
    waiting, by `check` (the training loop's storage check, so a refused upload stops the run where
    every rank can stop together). Each write is atomic (`write_bytes`), so a reader sees the old
    set of files or the new one.
    """

    def __init__(self):
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def submit(self, work) -> None:
        """Run `work()` (writes through this module) in the background after the previous one."""
        self.wait()

        def run() -> None:
            try:
                work()
            except BaseException as error:  # re-raised by wait() in the training thread
                self._error = error

        self._thread = threading.Thread(target=run, name="began-upload", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Re-raise the error of a write that has finished; never waits for one in flight."""
        if self._thread is None or not self._thread.is_alive():
            self.wait()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def local_dir(path: str) -> str:
    """A local directory (made if missing) for a tool that writes files itself; URIs: use LocalMirror."""
    if not is_local(path):
        raise ValueError(f"{path}: a tool writing its own files needs a local directory (LocalMirror)")
    local = os.path.abspath(_local_path(path))
    os.makedirs(local, exist_ok=True)
    return local
