"""Rank 0's writes to the run directory and how their failures stop every rank (the loop's storage check).

A write that fails for good (a full disk, a file-size limit, an object store that refuses it:
storage.permanent_write_error) is kept until the next point every rank passes (a log step, a
checkpoint), then every rank stops with StorageFailed (exit 4): rank 0 alone stopping would leave
the others waiting in the next all-reduce. A checkpoint uploading in the background
(storage.BackgroundWriter) reports its failure at the same checks. Any other error (the store
unreachable past the SDK's retries, storage.S3_MAX_ATTEMPTS) is raised, so Ray restarts the
worker group from the last checkpoint.
"""

from __future__ import annotations

import contextlib
from typing import Optional

from began_dist import storage
from began_dist.distributed import comm
from began_dist.train.guards import StorageFailed


class RunDirWrites:
    """Mixed into the loop's Trainer: `rank`, `run_dir`, `storage_failure` and `uploads` are its."""

    rank: int
    run_dir: str
    storage_failure: Optional[str]  # rank 0's first failed write, until the next storage check
    uploads: Optional[storage.BackgroundWriter]  # an object-store run directory's checkpoint uploads

    @contextlib.contextmanager
    def _writes(self):
        """Rank 0's writes to the run directory: a StorageError is kept until the next storage check."""
        try:
            yield
        except storage.StorageError as error:
            self.storage_failure = self.storage_failure or f"run.dir={storage.display(self.run_dir)}: {error}"

    def _check_storage(self, log=None) -> None:
        """Every rank stops together when rank 0 could not write: alone, the others would wait in the
        next all-reduce. Called where every rank passes (log steps, checkpoints)."""
        if self.uploads is not None:
            with self._writes():
                self.uploads.check()  # a checkpoint upload that finished with an error
        failure = self.storage_failure or (log.failure if log is not None else None)
        failure = comm.broadcast_object(failure)
        if failure:
            raise StorageFailed(failure)

    def _finish_uploads(self) -> None:
        """Wait for the last checkpoint upload (it is in RUN_DIR before the run says so)."""
        if self.uploads is not None:
            with self._writes():
                self.uploads.wait()
