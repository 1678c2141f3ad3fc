"""Elastic runs: a worker range that follows the cluster (docs/design.md, "Elastic runs").

`run.min_workers < run.workers` hands Ray Train a range, `ScalingConfig(num_workers=(min, max))`,
which selects its elastic scaling policy (installed ray 2.60:
ray/train/v2/_internal/execution/scaling_policy/elastic.py): the worker group starts with as many
workers as the cluster holds (at least the minimum), and every `run.resize_interval_s`
(`elastic_resize_monitor_interval_s`, counted from the last restart) it checks whether that number
changed. A resize restarts the whole group; the new group resumes from the newest checkpoint in
RUN_DIR, and since the global batch and its latents do not depend on the worker count (the
data-parallel rule), every step sees what a fixed-size run's step sees.

`ElasticMonitor` is a Ray Train callback; it runs in the Train controller, on the driver's node:
- it says why each worker group starts (the first start, a node lost, a node joined, a failure)
  in RUN_DIR/.began-dist-resize, which rank 0 of the new group writes into log.txt;
- it counts `run.max_failures` itself: Ray counts a worker that died with its node as a failure,
  but in an elastic run a lost node is a membership change, so Ray gets `max_failures=-1`;
- when a group fails, it waits (bounded) until Ray has decided about each of its workers, alive or
  dead with its node, so the cause is known, and it refreshes the node view that sizes the next
  group. Ray's autoscaling coordinator refreshes that view every 20 s only
  (ray/data/_internal/cluster_autoscaler/default_autoscaling_coordinator.py, TICK_INTERVAL_S); a group
  sized on a stale view waits RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s) for a node that is gone,
  and that counts against `run.controller_failure_limit`. The view is also refreshed every half
  `run.resize_interval_s` while a group runs, so a joined node is seen at the next resize check.
"""

from __future__ import annotations

import logging
import time
from typing import Optional, Union

from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

from began_dist import storage
from began_dist.config import worker_range

logger = logging.getLogger(__name__)

RESIZE_NOTE = ".began-dist-resize"  # RUN_DIR/<this>: why the current worker group started
# Bound on waiting for Ray to declare a failed group's silent workers dead: Ray's node health checks
# take 15-60 s with their defaults (health_check_period_ms x health_check_failure_threshold, plus a timeout).
DEATH_WAIT_S = 120.0
COORDINATOR_TIMEOUT_S = 5.0
REFRESH_MIN_S = 2.0  # Ray Train polls the workers every 2 s (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S)


def is_elastic(run) -> bool:
    low, high = worker_range(run)
    return low < high


def scaling_workers(run) -> Union[int, tuple[int, int]]:
    """`ScalingConfig(num_workers=...)`: the fixed count, or Ray's (min, max) range."""
    low, high = worker_range(run)
    return (low, high) if low < high else high


def scaling(run) -> tuple[Union[int, tuple[int, int]], int, list]:
    """(ScalingConfig's num_workers, FailureConfig's max_failures, Ray Train callbacks) of a run.

    An elastic run's monitor counts run.max_failures itself, without the nodes lost, so Ray's own
    count is unbounded (-1).
    """
    if not is_elastic(run):
        return run.workers, run.max_failures, []
    return scaling_workers(run), -1, [ElasticMonitor(run.dir, run.max_failures, run.resize_interval_s,
                                                     *worker_range(run))]


def resize_note(trainer) -> str:
    """For rank 0 of an elastic run: what the controller wrote about this worker group's start ('' else)."""
    if trainer.rank != 0 or not is_elastic(trainer.cfg.run):
        return ""
    try:
        return storage.read_text(storage.join(trainer.run_dir, RESIZE_NOTE)).strip()
    except (OSError, storage.StorageError):
        return ""


def refresh_node_view() -> None:
    """Make Ray's autoscaling coordinator re-read the cluster's nodes now (its `recompute=True`)."""
    import ray
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )

    try:
        coordinator = get_or_create_autoscaling_coordinator()
        ray.get(coordinator.get_reserved_resources.remote("began-dist", recompute=True), timeout=COORDINATOR_TIMEOUT_S)
    except Exception as error:  # Ray refreshes it itself within 20 s
        logger.warning("began-dist: could not refresh the autoscaling coordinator's node view: %s", error)


def alive_nodes() -> dict[str, str]:
    """Node id -> IP address of every node Ray counts alive."""
    import ray

    return {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")}


def summary(error: BaseException) -> str:
    """One line about a Train failure: the first line of each distinct worker error (or the error's)."""
    failures = getattr(error, "worker_failures", None) or {}
    if not failures:
        return _first_line(error)
    lines: dict[str, list[int]] = {}
    for rank, failure in sorted(failures.items()):
        lines.setdefault(_first_line(failure), []).append(rank)
    return "; ".join(f"rank {', '.join(map(str, ranks))}: {line}" for line, ranks in lines.items())


def _preempted_worker(error: BaseException) -> bool:
    """A worker died with a node Ray was draining for preemption (as Ray's own failure policy tells,
    ray/train/v2/_internal/execution/failure_handling/default.py)."""
    failures = (getattr(error, "worker_failures", None) or {}).values()
    return any(getattr(getattr(f, "health_check_failure", f), "preempted", False) for f in failures)


def _first_line(error: BaseException) -> str:
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {text}"[:300]


class ElasticMonitor(ControllerCallback, WorkerGroupCallback):
    """Follows the worker groups of one elastic run from the Train controller (this module's docstring)."""

    def __init__(self, run_dir: str, max_failures: int, resize_interval_s: float, low: int, high: int):
        self.run_dir, self.max_failures = run_dir, max_failures
        self.refresh_every_s = max(resize_interval_s / 2, REFRESH_MIN_S)
        self.low, self.high = low, high
        self.failures = 0  # failures counted against run.max_failures
        self.size = 0  # workers of the group that ran last (0: none yet)
        self.workers: list = []  # that group's workers (Ray Train's Worker: actor, metadata)
        self.nodes: dict[str, str] = {}  # node id -> IP of that group's workers
        self.known: dict[str, str] = {}  # the nodes alive when that group started
        self.cause = ""  # why the next group starts
        self.refreshed = 0.0

    # -- controller start -------------------------------------------------------------------
    def after_controller_start(self, train_run_context) -> None:
        """Size the first group on the cluster as it is now: nodes that joined in the last 20 s are
        not yet in the coordinator's view, and the first group would start smaller (then grow)."""
        refresh_node_view()

    # -- worker group hooks ---------------------------------------------------------------
    def after_worker_group_start(self, worker_group) -> None:
        self.workers = list(worker_group.get_workers())
        self.size = len(self.workers)
        self.nodes = {w.metadata.node_id: w.metadata.node_ip for w in self.workers}
        self.known = alive_nodes()

    def after_worker_group_poll_status(self, worker_group_status) -> None:
        now = time.monotonic()
        if now - self.refreshed >= self.refresh_every_s:
            self.refreshed = now
            refresh_node_view()

    # -- controller hooks -----------------------------------------------------------------
    def after_controller_state_update(self, previous_state, current_state) -> None:
        from ray.train.v2._internal.execution.controller.state import (
            ReschedulingState,
            ResizingState,
            RestartingState,
        )

        if isinstance(current_state, RestartingState):
            self._failed(current_state.training_failed_error)
        elif isinstance(current_state, ResizingState):
            joined = sorted(set(alive_nodes().items()) - set(self.known.items()))
            new = current_state.scaling_decision.num_workers
            self.cause = (
                f"room for {new} workers" + (f": node {', '.join(ip for _, ip in joined)} joined" if joined else "")
            )
        elif isinstance(current_state, ReschedulingState):  # a start that failed: Ray counts it (controller)
            refresh_node_view()

    def on_controller_start_worker_group(self, *, scaling_config, num_workers: int) -> Optional[dict]:
        resume = "; resuming from the newest checkpoint"
        if not self.size:
            text = f"elastic: started with {num_workers} workers (range {self.low}..{self.high})"
        elif num_workers != self.size:
            text = f"elastic: world size {self.size} -> {num_workers}: {self.cause}{resume}"
        else:
            text = f"elastic: restart with {num_workers} workers: {self.cause}{resume}"
        try:
            storage.write_text(storage.join(self.run_dir, RESIZE_NOTE), text + "\n")
        except (OSError, storage.StorageError) as error:
            logger.warning("began-dist: %s (could not record it in the run directory: %s)", text, error)
        return None

    # -- a failed group -------------------------------------------------------------------
    def _failed(self, error: BaseException) -> None:
        from ray.train.v2.api.exceptions import PreemptionError

        if isinstance(error, PreemptionError):  # Ray restarts at the drain deadline: wait for the node to go
            gone = error.preemption_info.preempted_node_ids
            self._wait_gone(gone)
            where = ", ".join(sorted(self.nodes.get(node, node[:12]) for node in gone))
            self.cause = f"node {where} was preempted (not counted against run.max_failures)"
            refresh_node_view()
            return
        lost = self._lost_nodes()
        if _preempted_worker(error):
            self.cause = "a node was preempted (not counted against run.max_failures)"
        elif lost:
            where = ", ".join(sorted(lost.values()))
            self.cause = f"node {where} left the cluster (not counted against run.max_failures)"
        else:
            self.failures += 1
            if self.failures > self.max_failures:
                raise RuntimeError(
                    f"worker group failed {self.failures} times, more than run.max_failures={self.max_failures} "
                    f"(an elastic run does not count lost nodes): {summary(error)}"
                )
            self.cause = f"failure {self.failures} of run.max_failures={self.max_failures}: {summary(error)}"
        refresh_node_view()

    def _lost_nodes(self) -> dict[str, str]:
        """The failed group's nodes that left the cluster, once Ray has decided about every worker.

        A worker on a killed node answers nothing until Ray declares the node dead (its health
        checks); the others answer at once. So wait, bounded, for every worker's answer or death.
        """
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        deadline, pending = time.monotonic() + DEATH_WAIT_S, list(self.workers)
        while pending and time.monotonic() < deadline:
            probes = {worker.actor.__ray_ready__.remote(): worker for worker in pending}
            ready, _ = ray.wait(list(probes), num_returns=len(probes), timeout=max(0.0, deadline - time.monotonic()))
            undecided = [probes[ref] for ref in probes if ref not in ready]
            for ref in ready:
                try:
                    ray.get(ref)
                except ActorUnavailableError:  # unreachable, not yet declared dead: ask again
                    undecided.append(probes[ref])
                except RayActorError:  # dead: decided
                    pass
            pending = undecided
            if pending:
                time.sleep(1.0)
        alive = alive_nodes()
        return {node: ip for node, ip in self.nodes.items() if node not in alive}

    @staticmethod
    def _wait_gone(nodes: list[str]) -> None:
        """Wait (bounded) until Ray no longer counts `nodes` alive: a draining node still counts, and a
        group sized with it would wait for its placement."""
        deadline = time.monotonic() + DEATH_WAIT_S
        while set(nodes) & set(alive_nodes()) and time.monotonic() < deadline:
            time.sleep(1.0)
