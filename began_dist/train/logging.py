"""What a run writes about itself: log.txt, stats.jsonl, TensorBoard (tb/), samples/.

Only rank 0 writes; other ranks get a logger with `enabled=False`. On resume,
stats.jsonl is cut back to the checkpoint's step and TensorBoard purges later
steps, so no step is ever recorded twice.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Optional

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from began_dist import storage
from began_dist.images import make_grid, save_grid

# every family; perf/data_wait_s: seconds per step a rank waited for its batch (mean over ranks);
# perf/comm_*: bytes a rank handed to the gradient all-reduces per step, seconds per step it waited on them
# (mean over ranks, and the rank that waited longest; docs/performance.md)
COMMON_SCALARS = {
    "lr_G": "lr/G",
    "lr_D": "lr/D",
    "images_per_s": "perf/images_per_s",
    "data_wait_s": "perf/data_wait_s",
    "comm_bytes": "perf/comm_bytes",
    "comm_wait_s": "perf/comm_wait_s",
    "comm_wait_max_s": "perf/comm_wait_max_s",
}


def stats_keys(family_scalars: dict[str, str]) -> tuple[str, ...]:
    """One stats.jsonl line's keys, in order: step, the family's stats, lr and speed, time, and what the step
    saw: the worker count and the digest of its global batch (images and latents; the same for any count)."""
    return ("step", *family_scalars, *COMMON_SCALARS, "time_s", "world_size", "batch_digest")


class _TqdmConsole(logging.Handler):
    """Console output that does not tear the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stdout)


def truncate_stats(path: str, last_step: int) -> None:
    """Drop stats.jsonl lines after `last_step` (and a torn last line), atomically."""
    storage.truncate_jsonl(path, last_step)


class _AppendHandler(logging.Handler):
    """log.txt through the storage layer: one append per record, as logging.FileHandler did."""

    def __init__(self, path: str):
        super().__init__()
        self.appender = storage.Appender(path)
        self.failure: Optional[str] = None  # a permanent write error, for the loop's storage check

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.appender.write(self.format(record) + "\n")
        except storage.StorageError as error:  # logging never raises into the caller: the loop asks
            self.failure = self.failure or str(error)
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.appender.flush()


class RunLogger:
    def __init__(
        self,
        run_dir: str,
        enabled: bool,
        start_step: int,
        total_steps: int,
        progress: bool,
        scalars: dict[str, str],  # the family's stats -> TensorBoard tags (Family.scalar_tags)
        shown: tuple[str, ...],  # the stats the progress bar shows (Family.progress_keys)
    ):
        self.run_dir, self.enabled = run_dir, enabled
        self.keys, self.tags, self.shown = stats_keys(scalars), {**scalars, **COMMON_SCALARS}, shown
        self.bar = None
        self.start_step, self.total_steps, self.started = start_step, total_steps, time.monotonic()
        if not enabled:
            return
        storage.makedirs(storage.join(run_dir, "samples"))
        self.stats_path = storage.join(run_dir, "stats.jsonl")
        truncate_stats(self.stats_path, start_step)
        self.stats = storage.Appender(self.stats_path)
        # TensorBoard writes its own event files: a local directory, uploaded to RUN_DIR/tb on each
        # flush when the run directory is on an object store (began_dist/storage/__init__.py says why).
        self.tb_mirror = storage.LocalMirror(storage.join(run_dir, "tb"))
        self.tb = SummaryWriter(self.tb_mirror.local, purge_step=start_step + 1 if start_step else None)
        self.log = logging.getLogger(f"began_dist.run.{id(self)}")
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        file_handler = _AppendHandler(storage.join(run_dir, "log.txt"))
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        self.log.addHandler(file_handler)
        self.log.addHandler(_TqdmConsole())
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr)

    @property
    def failure(self) -> Optional[str]:
        """log.txt's first permanent write error (disk full, file too large), or None."""
        handlers = self.log.handlers if self.enabled else []
        return next((h.failure for h in handlers if isinstance(h, _AppendHandler) and h.failure), None)

    def info(self, message: str) -> None:
        if self.enabled:
            self.log.info(message)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def scalars(self, record: dict) -> None:
        """One stats.jsonl line and the TensorBoard scalars for `record['step']`."""
        if not self.enabled:
            return
        line = {key: record[key] for key in self.keys}
        self.stats.write(json.dumps(line) + "\n")
        for key, tag in self.tags.items():
            self.tb.add_scalar(tag, record[key], record["step"])
        if self.bar is not None:
            self.bar.set_postfix({key: f"{record[key]:.4f}" for key in self.shown[:-1]}, refresh=False)
        else:  # no bar (a Ray Train worker: its stdout goes to the driver's console): one line per log step
            shown = " ".join(f"{key} {record[key]:.4f}" for key in self.shown)
            self.info(f"step {record['step']}/{self.total_steps}: {shown} "
                      f"{record['images_per_s']:.1f} images/s ETA {self._eta(record['step'])}")

    def _eta(self, step: int) -> str:
        done = step - self.start_step
        if done <= 0:
            return "?"
        left = (time.monotonic() - self.started) / done * (self.total_steps - step)
        return time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86400 else f"{left / 3600:.0f} h"

    def images(self, step: int, panels: dict[str, torch.Tensor], sample_name: str = "G_fixed") -> None:
        """TensorBoard images/<name> for each panel; samples/step-XXXXXXXX.png of G(z_fixed)."""
        if not self.enabled:
            return
        for name, batch in panels.items():
            self.tb.add_image(f"images/{name}", make_grid(batch), step, dataformats="CHW")
        save_grid(panels[sample_name], storage.join(self.run_dir, "samples", f"step-{step:08d}.png"))

    def flush(self) -> None:
        """Make stats.jsonl, log.txt and tb/ durable (where an object-store run directory uploads them)."""
        if self.enabled:
            self.stats.flush()
            for handler in self.log.handlers:
                handler.flush()
            self.tb.flush()
            self.tb_mirror.sync()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.tb.close()
        try:
            self.flush()  # may raise StorageError: the handlers and the mirror's directory still go
        finally:
            for handler in list(self.log.handlers):
                handler.close()
                self.log.removeHandler(handler)
            self.tb_mirror.close()
