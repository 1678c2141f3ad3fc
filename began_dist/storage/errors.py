"""Write errors of the run directory that retrying would not cure, and `writing`, which names them.

Part of began_dist.storage (which re-exports all of it); it imports nothing of the package.
"""

from __future__ import annotations

import contextlib
import errno
import re
from collections.abc import Iterator
from typing import Optional

# A full disk, a file-size or quota limit, a read-only or forbidden directory: retrying the
# same write fails the same way, so a run stops with Status.storage_error (exit 4) instead.
PERMANENT_WRITE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EFBIG", "EDQUOT", "EROFS", "EACCES", "EPERM") if hasattr(errno, name)
)
# An object store's refusal, as pyarrow words the AWS SDK's error: "AWS Error ACCESS_DENIED during
# PutObject operation: ..." or "AWS Error UNKNOWN (HTTP status 403) during ...". The SDK retried what
# is transient already (network, 5xx, throttling: storage.filesystem); what is left is transient only when
# the store stayed unreachable past those retries, which is not the store refusing (Ray may restart
# the worker group elsewhere). A refusal is any other 4xx but 408 (timeout) and 429 (throttling).
_AWS_ERROR = re.compile(r"AWS Error (\w+)(?: \(HTTP status (\d+)\))?")
STORE_REFUSALS = frozenset({
    "ACCESS_DENIED", "NO_SUCH_BUCKET", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH",
    "MISSING_AUTHENTICATION_TOKEN", "INVALID_CLIENT_TOKEN_ID", "UNRECOGNIZED_CLIENT", "INVALID_SIGNATURE",
})


def store_refusal(error: BaseException) -> Optional[str]:
    """The AWS error of an object store that refused a request for good, e.g. 'ACCESS_DENIED', or None."""
    match = _AWS_ERROR.search(str(error)) if isinstance(error, OSError) and error.errno is None else None
    if match is None:
        return None
    code, status = match.group(1), int(match.group(2) or 0)
    return code if code in STORE_REFUSALS or (400 <= status < 500 and status not in (408, 429)) else None


class StorageError(RuntimeError):
    """A write to the run directory failed for good; the message names the path and the error."""

    def __init__(self, path: str, error: OSError):
        self.path, self.error = path, error
        why = f"{error.strerror or error} (errno {error.errno})" if error.errno is not None else str(error)
        super().__init__(f"cannot write {_shown(path)}: {why}")


def permanent_write_error(error: BaseException) -> Optional[OSError]:
    """`error` (or the OSError it wraps, e.g. inside torch.save's RuntimeError) when it is permanent."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and (seen.errno in PERMANENT_WRITE_ERRNOS or store_refusal(seen)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turn a permanent write error inside the block into a StorageError naming `path`."""
    try:
        yield
    except StorageError:
        raise
    except Exception as error:
        found = permanent_write_error(error)
        if found is None:
            raise
        raise StorageError(path, found) from error


def _shown(path: str) -> str:
    """`path` for a message: a URI without its `?query` (the store's endpoint and options)."""
    return str(path).partition("?")[0] if "://" in str(path) else str(path)
