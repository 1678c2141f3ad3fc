"""What a training run ends with: a `RunResult` whose `status` is a `Status`.

`launch()` returns one in every mode, and a Ray Train worker returns one to the
driver: the outcome crosses process boundaries as this typed value, never as a
dict with a status string. The command line maps `Status` to its exit code in one
table (began_dist/cli.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional


class Status(enum.Enum):
    done = "done"  # every step trained, the final checkpoint written
    non_finite = "non_finite"  # stopped on a NaN/inf loss; the last good checkpoint kept
    interrupted = "interrupted"  # SIGINT/SIGTERM: a checkpoint saved, resume with --resume
    refused = "refused"  # bad input, refused before any work
    storage_error = "storage_error"  # the run directory refused a write (permanent, not retried)
    failed = "failed"  # anything else: workers failed beyond run.max_failures, ...


@dataclass
class RunResult:
    status: Status
    step: int = 0  # the last step trained (the final checkpoint's step when done)
    metrics: dict[str, Any] = field(default_factory=dict)  # the last logged record (stats.jsonl keys)
    checkpoint: Optional[str] = None  # the newest checkpoint written or restored
    run_dir: str = ""
    message: str = ""  # why it is not done (the error text), for the console
    debug: dict[str, Any] = field(default_factory=dict)  # diagnostics for tests: replica_digests, worker_nodes

    @property
    def ok(self) -> bool:
        return self.status is Status.done
