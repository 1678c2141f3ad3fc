"""Loading off the step's critical path: the next batches are read while the current step runs.

A background thread walks the sampler's positions ahead of training: it gathers this
rank's slice of each coming global batch from the dataset, converts it to the model's
range, and on CUDA pins it and copies it `non_blocking` on a side stream. The training
thread takes finished batches from a bounded queue. Gathers from memory maps, the
conversion and the copies run in numpy and torch code that releases the GIL, so they
overlap the step.

Nothing about the order changes (docs/data.md, "Prefetch"): the thread follows a copy
of the sampler (`GlobalBatchSampler.batch_at`), and the real sampler moves only when a
batch is consumed, so a checkpoint records the position of the last batch the step
used, never of one merely read ahead. If the sampler is repositioned (a resume), the
batches read ahead are dropped and reading starts again from the new position.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from typing import NamedTuple, Optional

import torch

from began_dist.data.dataset import ImageDataset, to_model_range
from began_dist.data.sampler import GlobalBatchSampler

POLL_S = 0.1  # how often a blocked put/get looks at the stop flag and the thread


class Batch(NamedTuple):
    indices: torch.Tensor  # this rank's image indices (CPU int64)
    real: torch.Tensor  # the images as float32 in [-1, 1] on the device (to_model_range)
    labels: Optional[torch.Tensor]  # dataset.labels[indices] on the device, when asked for


class _Item(NamedTuple):
    before: tuple  # sampler position and order this batch starts from
    after: tuple[int, int]
    batch: Optional[Batch]
    error: Optional[BaseException]
    ready: Optional[torch.cuda.Event]


class Prefetcher:
    """`next()` = the sampler's next batch, loaded; `depth` batches are read ahead (0: read when asked)."""

    def __init__(self, dataset: ImageDataset, sampler: GlobalBatchSampler, device: torch.device, depth: int = 2,
                 labels: bool = False):
        self.dataset, self.sampler, self.device, self.depth, self.labels = dataset, sampler, device, depth, labels
        self.cuda = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if self.cuda and depth else None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._expected: Optional[tuple] = None
        self.wait_s = 0.0
        dataset.follow(sampler)  # remote shards: fetched into the node cache in the order the sampler needs them

    def _where(self) -> tuple:
        s = self.sampler
        return s.position, s.seed, s.shuffle

    def next(self) -> Batch:
        """The next batch; the time spent waiting for it is added to `wait_s`."""
        started = time.perf_counter()
        try:
            if not self.depth:
                indices, after = self.sampler.batch_at(self.sampler.position)
                item = _Item(self._where(), after, self._load(indices), None, None)
            else:
                item = self._take()
        finally:
            self.wait_s += time.perf_counter() - started
        if item.error is not None:
            self.close()  # the next call starts again at the batch that failed
            raise item.error
        if item.ready is not None:  # the copy ran on the side stream: order it before the step's use
            current = torch.cuda.current_stream(self.device)
            current.wait_event(item.ready)
            for tensor in (item.batch.real, item.batch.labels):
                if tensor is not None:
                    tensor.record_stream(current)
        self.sampler.epoch, self.sampler.offset = item.after
        self._expected = (item.after, *item.before[1:])
        return item.batch

    def take_wait_s(self) -> float:
        """Seconds spent waiting in next() since the last call (for perf/data_wait_s)."""
        waited, self.wait_s = self.wait_s, 0.0
        return waited

    def _take(self) -> _Item:
        if self._thread is None or self._expected != self._where():
            self.close()
            self._start()
        while True:
            try:
                return self._queue.get(timeout=POLL_S)
            except queue.Empty:
                if not self._thread.is_alive():  # it puts an item for every failure, so only close() ends it
                    raise RuntimeError("the prefetch thread stopped") from None

    def _start(self) -> None:
        self._stop, self._queue = threading.Event(), queue.Queue(maxsize=self.depth)
        cursor = copy.copy(self.sampler)  # its own epoch cache: the thread never touches the real sampler
        self._expected = self._where()
        self._thread = threading.Thread(target=self._run, args=(cursor, self._expected, self._stop, self._queue),
                                        name="began-dist-prefetch", daemon=True)
        self._thread.start()

    def _run(self, cursor: GlobalBatchSampler, where: tuple, stop: threading.Event, out: queue.Queue) -> None:
        position = where[0]
        while not stop.is_set():
            try:
                indices, after = cursor.batch_at(position)
                batch, ready = self._load(indices), None
                if self._stream is not None:
                    ready = torch.cuda.Event()
                    ready.record(self._stream)
                item = _Item((position, *where[1:]), after, batch, None, ready)
            except BaseException as error:  # handed to the consumer, raised where it takes this batch
                item = _Item((position, *where[1:]), position, None, error, None)
            while not stop.is_set():
                try:
                    out.put(item, timeout=POLL_S)
                    break
                except queue.Full:
                    continue
            if item.error is not None:
                return
            position = after

    def _load(self, indices: torch.Tensor) -> Batch:
        images = self.dataset.batch(indices)
        labels = self.dataset.label_rows(indices) if self.labels else None
        if self._stream is None:
            labels = None if labels is None else labels.to(self.device)
            return Batch(indices, to_model_range(images, self.device), labels)
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):  # pinned: truly asynchronous copies
            real = to_model_range(images.pin_memory(), self.device)
            labels = None if labels is None else labels.pin_memory().to(self.device, non_blocking=True)
        return Batch(indices, real, labels)

    def close(self) -> None:
        """Stop the thread and drop what it read ahead; safe to call twice. The sampler is not moved."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=60)
        self._thread = None

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
