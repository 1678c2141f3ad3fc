"""A bad shard met by a Ray Train worker mid-run ends the run as refused (exit 2), not retried.

Ray Train retries every exception a worker raises, up to `run.max_failures` worker-group
restarts (Ray 2.60, ray/train/v2/_internal/execution/failure_handling/default.py): a
corrupt or changed shard would be fetched, hashed and refused again each time, and the run
would end as `failed`. A run with one worker returns the refusal as its status, as the loop
does for checkpoints that do not verify (train/loop.py, `run_trainer`). With more workers
the rank that met the shard cannot: the others wait for it inside a collective of the same
step, and only Ray's teardown of the worker group frees them. So that rank records the
refusal in RUN_DIR (which every node sees: distributed/ray_train.py checks it) under the
driver's token of this launch, then raises. The workers of a restarted group find the record
before any data is touched and all return it as their status; when Ray does not restart
(`run.max_failures=0`) the driver finds it after `fit()` raises. Either way the run ends
`refused` with the message naming the shard, and the record is removed. (docs/data.md,
"Datasets on object storage")
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Optional

from began_dist import storage
from began_dist.data.dataset import DataError
from began_dist.train.result import RunResult, Status

MARKER = ".began-dist-refused"  # RUN_DIR/<this>: {"token": the launch's, "message": why}


def _marker(run_dir: str) -> str:
    return storage.join(run_dir, MARKER)


def recorded(run_dir: str, token: str) -> str:
    """The refusal a worker of this launch recorded, or ''."""
    try:
        record = json.loads(storage.read_text(_marker(run_dir)))
    except (OSError, ValueError):  # none (the usual case), or half-written: nothing to honour
        return ""
    return str(record.get("message", "")) if token and record.get("token") == token else ""


def agreed(run_dir: str, token: str) -> str:
    """`recorded`, agreed by every rank (a collective): a restarted group stops together before any step."""
    from began_dist.distributed import comm

    return next((message for message in comm.gather_objects(recorded(run_dir, token)) if message), "")


def run_refusing_bad_data(train: Callable[[], RunResult], run_dir: str, token: str, world: int) -> RunResult:
    """`train()` in a worker; a DataError becomes the refused status (world 1) or a recorded refusal, raised."""
    try:
        return train()
    except DataError as error:
        if world > 1:
            storage.write_text(_marker(run_dir), json.dumps({"token": token, "message": str(error)}))
            raise
        return RunResult(Status.refused, run_dir=run_dir, message=str(error))


def after_failure(run_dir: str, token: str) -> Optional[RunResult]:
    """On the driver once Ray gave up: the refused status when a worker recorded a refusal, else None."""
    message = recorded(run_dir, token)
    return RunResult(Status.refused, run_dir=run_dir, message=message) if message else None


def clear(run_dir: str) -> None:
    """Remove the record (the driver, when fit() is over); a store that cannot be reached just keeps it."""
    try:
        storage.delete(_marker(run_dir))
    except OSError:
        pass
