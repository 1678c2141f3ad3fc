"""Signals and drain notices under Ray Train: the Ray side of the loop's stop points (train/stops.py).

Ray Train V2 runs the training function in a thread, where `signal.signal` cannot be called, so:

- each worker process gets its SIGTERM handler from `WorkerSignals`, a worker callback that runs in
  the process's main thread when Ray sets up the worker (`after_init_train_context`). During the
  loop the handler only sets `train.stops.TERMINATED`; the loop saves a checkpoint of the last
  completed step at its next stop point and raises, and Ray restarts the worker group from it.
  Outside the loop, or at a second SIGTERM, Ray's own handler runs (the process exits);
- the driver runs `fit()` in a thread and keeps SIGINT/SIGTERM in its main thread (`DriverStops`):
  the first one sets a `StopFlag` actor that rank 0 reads at each stop point; the workers save,
  return Status.interrupted and the driver exits 130. A second signal stops at once. Ray's own
  SIGINT handler (registered by `fit()` only in the main thread: ray/train/v2/api/data_parallel_trainer.py)
  would abort the run without a checkpoint.
- a drain notice comes from `ray.train.get_preemption_info()` (Ray 2.60's preemption watcher polls
  draining nodes every RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S, 5 s by default).

`ray job stop` sends SIGTERM to the driver and SIGKILL RAY_JOB_STOP_WAIT_TIME_S (3 s by default)
later (ray/dashboard/modules/job/job_supervisor.py): the driver says so when that is short.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Optional

import ray
from ray.train.v2._internal.execution.callback import WorkerCallback

from began_dist.train import stops

# How long a SIGTERMed worker waits for the loop's next stop point before Ray's own SIGTERM
# handler ends the process: a worker blocked in a collective whose peer is gone never gets there.
WORKER_STOP_GRACE_S = 60.0
JOB_STOP_WAIT_DEFAULT_S = 3  # Ray 2.60's default RAY_JOB_STOP_WAIT_TIME_S
JOB_STOP_WAIT_ADVISED_S = 30


@ray.remote(num_cpus=0)
class StopFlag:
    """Set by the driver on SIGINT/SIGTERM; read by rank 0 at each stop point. In a sweep (tune/stops.py)
    each trial that saved its last completed step says so here, so the driver knows when to stop Tune."""

    def __init__(self):
        self.reason = ""
        self.saved_steps: dict = {}  # trial id -> the step its stop checkpoint holds
        self.stopping = False  # the sweep's driver has stopped Tune's loop: the trials may return

    def set(self, reason: str) -> None:
        self.reason = self.reason or reason

    def get(self) -> str:
        return self.reason

    def saved(self, trial_id: str, step: int) -> None:
        self.saved_steps[trial_id] = step

    def saved_trials(self) -> dict:
        return dict(self.saved_steps)

    def stop_tune(self) -> None:
        self.stopping = True

    def tune_stopped(self) -> bool:
        return self.stopping


def driver_stop_flag():
    """A StopFlag on the driver's node: placed on a worker's node, the flag died with that node (a lost or
    preempted host) and took every surviving rank's next stop point with it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return StopFlag.options(scheduling_strategy=here).remote()


class WorkerSignals(WorkerCallback):
    """Installs the worker's SIGTERM handler in its main thread (Ray 2.60 calls a WorkerCallback's
    hooks there; RunConfig(callbacks=...) forwards WorkerCallbacks to every worker it starts)."""

    def after_init_train_context(self):
        if threading.current_thread() is threading.main_thread():
            install_worker_handler()


def install_worker_handler() -> None:
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        if stops.LISTENING.is_set() and not stops.TERMINATED.is_set():
            stops.TERMINATED.set()
            # Bounded: if no stop point comes, the second SIGTERM takes Ray's path below.
            timer = threading.Timer(WORKER_STOP_GRACE_S, os.kill, (os.getpid(), signal.SIGTERM))
            timer.daemon = True
            timer.start()
            return
        signal.signal(signal.SIGTERM, previous)
        if callable(previous):
            previous(signum, frame)
        else:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def preemption_notice() -> Optional[tuple]:
    """(key, description) of Ray's drain notice for a node of this worker group, or None.

    A barrier: every rank calls it at every stop point (ray.train.get_preemption_info)."""
    info = ray.train.get_preemption_info()
    if info is None:
        return None
    nodes = ", ".join(node[:12] for node in info.preempted_node_ids)
    if info.deadline_ms:
        deadline = f"deadline in {max(0.0, info.deadline_ms / 1000 - time.time()):.0f} s"
    else:
        deadline = "no deadline"
    key = (tuple(info.preempted_node_ids), info.deadline_ms)
    return key, f"drain notice for node {nodes} (ranks {info.preempted_ranks}, {deadline})"


class DriverStops:
    """The driver's SIGINT/SIGTERM: ask the workers to save and stop (`fit`), a second one stops at once."""

    def __init__(self, flag=None):
        """`flag`: a sweep's StopFlag when this run is a nested Tune trial (tune/stops.py sets it), else a new one."""
        self.flag = flag or driver_stop_flag()

    def fit(self, trainer):
        """`trainer.fit()`, in a thread when this is the main thread, which then handles the signals."""
        if threading.current_thread() is not threading.main_thread():
            return trainer.fit()  # a nested Tune trial: Tune stops it
        outcome: dict = {}

        def target():
            try:
                outcome["result"] = trainer.fit()
            except BaseException as error:  # re-raised in the main thread
                outcome["error"] = error

        received: list[int] = []

        def handler(signum, frame):
            received.append(signum)
            if len(received) > 1:
                raise KeyboardInterrupt  # a second signal: stop now (exit 130), no new checkpoint

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        fitting = threading.Thread(target=target, name="began-dist-fit", daemon=True)
        try:
            warn_job_stop_wait()
            fitting.start()
            while fitting.is_alive():
                fitting.join(0.2)
                if received and not ray.get(self.flag.get.remote(), timeout=60):
                    self._stop(signal.Signals(received[0]).name)
        finally:
            for sig, handler_before in previous.items():
                signal.signal(sig, handler_before)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def _stop(self, name: str) -> None:
        self.flag.set.remote(name)
        print(f"began-dist: {name}: the workers save a checkpoint of the last completed step at their next stop "
              "point (run.stop_check_every) and stop; a second signal stops at once", file=sys.stderr, flush=True)


def job_stop_wait_s(environ=os.environ) -> Optional[int]:
    """RAY_JOB_STOP_WAIT_TIME_S of the `ray job submit` job this driver runs as, None outside a job."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in environ:  # set by Ray's job supervisor for the entrypoint
        return None
    try:
        return int(environ.get("RAY_JOB_STOP_WAIT_TIME_S", JOB_STOP_WAIT_DEFAULT_S))
    except ValueError:
        return JOB_STOP_WAIT_DEFAULT_S


def warn_job_stop_wait(environ=os.environ) -> None:
    wait = job_stop_wait_s(environ)
    if wait is not None and wait < JOB_STOP_WAIT_ADVISED_S:
        print(
            f"began-dist: `ray job stop` kills this driver {wait} s after its SIGTERM (RAY_JOB_STOP_WAIT_TIME_S): "
            "too short, maybe, for the checkpoint it asks for; submit with --runtime-env-json "
            f"'{{\"env_vars\": {{\"RAY_JOB_STOP_WAIT_TIME_S\": \"{JOB_STOP_WAIT_ADVISED_S * 2}\"}}}}'",
            file=sys.stderr, flush=True,
        )
