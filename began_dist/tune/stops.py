"""SIGINT/SIGTERM to `began-dist tune` (also `ray job stop`): every running trial saves its last completed step.

Left to itself, Tune ends a sweep on SIGINT by saving its experiment state and then stopping the trial
actors (ray/tune/tune.py), so a trial's work since its last periodic checkpoint is lost; SIGTERM it does
not handle at all. So the driver handles both (`SweepStops.handling`, main thread) and:

1. sets the sweep's `StopFlag` (distributed/stops.py), which every trial's loop reads at its stop points:
   a one-worker trial through `TuneReporter.stop_requested`, a trial that drives a nested TorchTrainer
   through its rank 0 (`RayTrainReporter`);
2. the trial saves a checkpoint of its last completed step, reported to Tune like any checkpoint (so it
   is the trial's Tune checkpoint, and `--resume` continues from it), says so to the flag
   (`saved_then_wait`), and waits;
3. once every trial that was running has saved (or after TRIAL_STOP_GRACE_S), the driver calls Tune's
   own interrupt, the handler Tune registers for SIGUSR1: Tune leaves its loop after this step, saves
   its experiment state, with those checkpoints and every trial still RUNNING (so --resume continues
   them), and stops the trials; the sweep exits 130. The flag tells the waiting trials to return, which
   frees their actors for Tune's stop (an actor runs one task at a time: Tune's `stop` waits behind
   the trial's `train`, and Tune kills an actor that does not stop in 10 s).

A second signal calls Tune's interrupt at once, without waiting for the trials' checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

import ray
from ray import tune

from began_dist.distributed.stops import driver_stop_flag, warn_job_stop_wait

# How long the driver waits for the running trials' checkpoints before it stops Tune anyway (a trial
# still building its dataset, or stuck); `ray job stop` kills it sooner unless RAY_JOB_STOP_WAIT_TIME_S is raised.
TRIAL_STOP_GRACE_S = 60.0
POLL_S = 0.5  # how often the driver asks the flag which trials saved, while it waits
# How long a trial that saved waits for Tune to stop it: the driver stops Tune within TRIAL_STOP_GRACE_S,
# and a driver that died takes its trials with it (Ray ends the actors a driver owned).
TRIAL_WAIT_S = 600.0


_ACTIVE: list = []  # the SweepStops of the sweep this driver runs


def active_stops() -> tune.Callback:
    """What a pickled SweepStops loads as: the running driver's own. Tune pickles its RunConfig, callbacks
    included, into the experiment (tuner.pkl) and restores them from there on --resume, when the StopFlag
    of the driver that started the sweep is long gone."""
    return _ACTIVE[-1] if _ACTIVE else tune.Callback()


class SweepStops(tune.Callback):
    """The driver's side: a Tune callback (its steps run in the driver's main thread) plus the signal handler."""

    def __reduce__(self):
        return active_stops, ()

    def __init__(self):
        self.flag = driver_stop_flag()
        self.received: list[int] = []
        self.asked_at = 0.0
        self.waiting_for: set = set()  # ids of the trials that were running when the signal came
        self.polled = 0.0
        self.interrupted = self.released = False

    @contextlib.contextmanager
    def handling(self):
        """While Tune runs in this (main) thread: SIGINT and SIGTERM are ours, not Tune's
        (TUNE_DISABLE_SIGINT_HANDLER; Tune leaves SIGTERM alone)."""
        _ACTIVE.append(self)
        # Signal handlers can only be set in the main thread (Tune then sets none either); under Ray Client
        # (ray://) Tune's loop runs on the cluster, where this callback is not the driver's: Ctrl-C stays Ray's.
        if threading.current_thread() is not threading.main_thread() or ray.util.client.ray.is_connected():
            try:
                yield
            finally:
                _ACTIVE.remove(self)
            return
        saved_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            warn_job_stop_wait()
            yield
        finally:
            _ACTIVE.remove(self)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if saved_env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = saved_env

    def _handler(self, signum, frame) -> None:
        self.received.append(signum)
        if len(self.received) > 1:
            self._interrupt_tune()  # a second signal: stop now

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if not self.received or self.released:
            return
        if not self.interrupted:
            self._ask_and_wait(trials)
        if self.interrupted:  # Tune leaves its loop after this step: it processes no trial's result any more
            self.released = True
            self.flag.stop_tune.remote()

    def _ask_and_wait(self, trials: list) -> None:
        """Ask the running trials to save (once), then stop Tune when they all did, or after the grace time."""
        running = {trial.trial_id for trial in trials if trial.status == trial.RUNNING}
        name = signal.Signals(self.received[0]).name
        if not self.asked_at:
            self.asked_at, self.waiting_for = time.monotonic(), running
            self.flag.set.remote(name)
            print(f"began-dist: {name}: {len(running)} running trial(s) save a checkpoint of their last completed "
                  "step, then the sweep stops (resume with --resume); a second signal stops without waiting",
                  file=sys.stderr, flush=True)
        if time.monotonic() - self.polled < POLL_S:
            return
        self.polled = time.monotonic()
        pending = (self.waiting_for & running) - set(ray.get(self.flag.saved_trials.remote(), timeout=60))
        if pending and time.monotonic() - self.asked_at < TRIAL_STOP_GRACE_S:
            return
        if pending:
            print(f"began-dist: no checkpoint from trial(s) {', '.join(sorted(pending))} within "
                  f"{TRIAL_STOP_GRACE_S:.0f} s: they resume from their last periodic one", file=sys.stderr, flush=True)
        self._interrupt_tune()

    def _interrupt_tune(self) -> None:
        """Tune's own graceful stop: the handler it registered for SIGUSR1 (ray/tune/tune.py,
        _setup_signal_catching) saves the experiment state after this step, then stops the trials."""
        self.interrupted = True
        tune_handler = signal.getsignal(signal.SIGUSR1)
        if callable(tune_handler):
            tune_handler(signal.SIGUSR1, None)
        else:  # no Tune loop in this thread: nothing to stop gracefully
            raise KeyboardInterrupt


def saved_then_wait(stop_flag, trial_id: str, step: int) -> None:
    """The trial's side, once its loop saved step `step` and stopped: tell the driver, and return once
    Tune's loop has ended (returning earlier would mark the trial finished, so --resume would skip it)."""
    ray.get(stop_flag.saved.remote(trial_id, step), timeout=60)
    deadline = time.monotonic() + TRIAL_WAIT_S
    while time.monotonic() < deadline:
        if ray.get(stop_flag.tune_stopped.remote(), timeout=60):
            return
        time.sleep(POLL_S)
    raise RuntimeError(f"trial {trial_id}: saved step {step} for a stop; Tune did not stop in {TRIAL_WAIT_S:.0f} s")
