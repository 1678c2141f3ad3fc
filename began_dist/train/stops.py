"""Stop points: where a run saves, and maybe stops, between steps because something outside asked.

    who asks                                           what the run does (docs/design.md, "Stops and preemption")
    SIGINT/SIGTERM to a local run, or to the driver    a checkpoint of the last completed step, exit 130
      of a Ray run (also `ray job stop`)
    SIGTERM to one Ray Train worker (its node is       a checkpoint of the last completed step; then every rank
      being shut down)                                   raises WorkerStopped and Ray restarts the worker group
    Ray's drain notice for a node that hosts a worker  a just-in-time checkpoint, once per notice; training goes
      (a spot reclaim)                                   on until the node is gone, then Ray restarts from it

Every rank must reach the same decision at the same step, so the requests are agreed at a stop
point every `run.stop_check_every` steps: one all-reduce of each rank's flags, and Ray's
preemption barrier, which every rank calls equally often (`Reporter.preemption`). In local mode
a stop point costs nothing and comes after every step.
"""

from __future__ import annotations

import contextlib
import threading

import torch

from began_dist.distributed import comm
from began_dist.train.guards import Interrupted

# Set by the SIGTERM handler of a Ray Train worker process (began_dist/distributed/stops.py). Module
# state, not the loop's: the handler runs in the process's main thread, the loop in Ray's training thread.
TERMINATED = threading.Event()
# Set while a loop checks stop points: a SIGTERM to a worker outside one (Ray tearing the group
# down) takes Ray's own path at once.
LISTENING = threading.Event()


class WorkerStopped(RuntimeError):
    """A Ray Train worker got SIGTERM; the checkpoint is saved and Ray restarts the worker group from it.

    Raised (not returned as a status) on every rank: Ray retries it, counting against run.max_failures.
    """


class StopPoints:
    """Agrees, every `every` steps, on what the run was asked to do, and does it (`after_step`)."""

    def __init__(self, reporter, every: int, device: torch.device):
        self.reporter, self.every, self.device = reporter, max(1, int(every)), device
        self.rank, self.world = comm.rank(), comm.world_size()
        self.notices_saved: set = set()  # drain notices a just-in-time checkpoint was written for

    def after_step(self, trainer, log, interrupt: threading.Event) -> None:
        """At a stop point: save and raise Interrupted / WorkerStopped, or write a just-in-time checkpoint."""
        step = trainer.step
        if step % self.every:
            return
        interrupted, terminated = self._flags(interrupt)
        notice = self.reporter.preemption()  # a barrier: every rank, every stop point
        if interrupted:
            self._save(trainer)
            log.info(f"interrupted at step {step}: checkpoint {trainer.last_checkpoint}")
            raise Interrupted(f"interrupted at step {step}; resume with --resume {trainer.run_dir}")
        if terminated:
            self._save(trainer)
            ranks = ", ".join(map(str, terminated))
            log.info(f"SIGTERM to worker rank {ranks} at step {step}: checkpoint {trainer.last_checkpoint}; "
                     "Ray Train restarts the worker group from it")
            raise WorkerStopped(f"rank {ranks} got SIGTERM; checkpoint at step {step}: {trainer.last_checkpoint}")
        if notice is not None and notice[0] not in self.notices_saved:
            self.notices_saved.add(notice[0])
            self._save(trainer)
            log.info(f"step {step}: {notice[1]}: just-in-time checkpoint {trainer.last_checkpoint}")
            with trainer._writes():  # an object store receives log.txt and stats.jsonl here
                log.flush()

    def _flags(self, interrupt: threading.Event) -> tuple[bool, list[int]]:
        """(a stop was asked for, the ranks whose process got SIGTERM), the same on every rank."""
        asked = interrupt.is_set() or (self.rank == 0 and self.reporter.stop_requested())
        if self.world == 1:  # no peer to agree with: reading a device tensor would sync a GPU every step
            return asked, [0] if TERMINATED.is_set() else []
        flags = torch.zeros(1 + self.world, device=self.device)
        flags[0] = float(asked)
        flags[1 + self.rank] = float(TERMINATED.is_set())
        flags = comm.all_reduce_mean(flags) * self.world
        terminated = [rank for rank in range(self.world) if flags[1 + rank] > 0.5]
        return bool(flags[0] > 0.5), terminated

    @staticmethod
    def _save(trainer) -> None:
        """A checkpoint of the last completed step, unless the periodic one just wrote it; reported with the
        metrics of the last logged step, as a Tune trial's scheduler and results table need the objective."""
        if trainer.saved_step != trainer.step:
            trainer.save(trainer._last_record)


@contextlib.contextmanager
def listening():
    """While the loop runs: a SIGTERM to this worker is the loop's to handle."""
    LISTENING.set()
    try:
        yield
    finally:
        LISTENING.clear()
