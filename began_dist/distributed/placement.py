"""Where a run's workers go: the resources one worker asks for, how many the cluster can place
now, and how long to wait for an autoscaler that can add the rest (docs/design.md, "Placement")."""

from __future__ import annotations

import math
import sys
import time

from began_dist.config import ConfigError, worker_range

UNBOUNDED = 2**31  # how many workers asking for nothing a node holds
AUTOSCALER_WAIT_S = 900.0
AUTOSCALER_IDLE_S = 60.0
AUTOSCALER_POLL_S = 5.0


def worker_bundle(run) -> dict:
    """Every resource one training worker asks Ray for (its placement-group bundle)."""
    bundle = {"CPU": run.cpus_per_worker, **dict(run.worker_resources)}
    if run.gpus_per_worker > 0:
        bundle["GPU"] = run.gpus_per_worker
    return bundle


def placeable_workers(nodes: list[dict], bundle: dict, strategy: str = "PACK") -> int:
    """How many workers asking `bundle` each the nodes (their total resources) can ever hold.

    Every resource in the bundle counts (CPU, GPU, custom ones such as `train_slot`): a node
    holds floor(have / ask) bundles of the scarcest one. STRICT_SPREAD places at most one worker
    per node, STRICT_PACK all of them on one node (Ray's placement-group strategies).
    """
    asked = {name: float(amount) for name, amount in bundle.items() if float(amount) > 0}
    per_node = []
    for node in nodes:
        fits = [math.floor(float(node.get(name, 0)) / amount + 1e-9) for name, amount in asked.items()]
        per_node.append(min(fits) if fits else UNBOUNDED)
    if strategy == "STRICT_SPREAD":
        return sum(min(count, 1) for count in per_node)
    if strategy == "STRICT_PACK":
        return max(per_node, default=0)
    return min(sum(per_node), UNBOUNDED)


def describe_placement(nodes: list[dict], bundle: dict, workers: int, strategy: str) -> str:
    """'cannot place N workers x ...: the cluster has ...', naming every resource asked for."""
    custom = [name for name in bundle if name not in ("CPU", "GPU")]
    asked = f"{workers} workers x {bundle['CPU']} CPU, {bundle.get('GPU', 0.0)} GPU"
    asked += "".join(f", {bundle[name]:g} {name}" for name in custom)
    totals = {name: sum(float(node.get(name, 0)) for node in nodes) for name in ("CPU", "GPU", *custom)}
    has = f"the cluster has {totals['CPU']:g} CPU and {totals['GPU']:g} GPU"
    has += "".join(f" and {totals[name]:g} {name}" for name in custom)
    room = placeable_workers(nodes, bundle, strategy)
    where = "on separate nodes" if strategy == "STRICT_SPREAD" else "on one node" if strategy == "STRICT_PACK" else ""
    return (
        f"cannot place {asked}{' ' + where if where else ''}: {has} on {len(nodes)} node(s), "
        f"room for {min(room, workers)} of them"
    )


def wait_for_autoscaler(
    observe,
    workers: int,
    say,
    *,
    wait_s: float = AUTOSCALER_WAIT_S,
    idle_s: float = AUTOSCALER_IDLE_S,
    poll_s: float = AUTOSCALER_POLL_S,
    clock=time.monotonic,
    sleep=time.sleep,
) -> int:
    """Poll `observe()` -> (workers placeable now, nodes the autoscaler is launching) until every
    worker fits, `wait_s` passes, or the autoscaler has launched nothing for `idle_s`; returns
    the last count of placeable workers. Every wait is bounded."""
    started = clock()
    last_busy = started
    shown = None
    while True:
        placeable, launching = observe()
        now = clock()
        if placeable >= workers:
            return placeable
        if launching:
            last_busy = now
        if (placeable, launching) != shown:
            say(
                f"waiting for the autoscaler: {placeable} of {workers} workers placeable, "
                f"{launching} node(s) launching (up to {wait_s:g} s)"
            )
            shown = (placeable, launching)
        if now - started >= wait_s or now - last_busy >= idle_s:
            return placeable
        sleep(poll_s)


def autoscaler_status():
    """The v2 autoscaler's view of this cluster (`ray.autoscaler.v2.sdk`), None without one.

    `ray up` starts Ray's v2 autoscaler by default since Ray 2.50 (KubeRay's in-tree
    autoscaler may run it too); the GCS records that it runs with it. The v1 autoscaler
    exposes no such status, so a cluster with it is checked like a fixed one.
    """
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    try:
        if not is_autoscaler_v2(fetch_from_server=True):
            return None
        return get_cluster_status(ray.get_runtime_context().gcs_address)
    except Exception:  # no autoscaler state in this GCS: checked like a fixed cluster
        return None


def check_placement(run, wait_s: float = AUTOSCALER_WAIT_S) -> None:
    """Refuse at once what the cluster can never place, instead of waiting forever.

    With an autoscaler, ask it for the workers' bundles (`ray.autoscaler.sdk.request_resources`,
    so it starts nodes before Ray Train's placement group exists) and wait a bounded time for
    them; refuse when the bound passes or the autoscaler stops launching nodes.
    """
    import ray

    def alive() -> list[dict]:
        return [n["Resources"] for n in ray.nodes() if n.get("Alive")]

    bundle = worker_bundle(run)
    nodes = alive()
    need, most = worker_range(run)  # an elastic run starts with what fits, if that is its minimum
    if placeable_workers(nodes, bundle, run.placement_strategy) >= need:
        return
    key = ("run.placement_strategy=STRICT_SPREAD" if run.placement_strategy == "STRICT_SPREAD"
           else "run.workers" if need == most else "run.min_workers")
    if autoscaler_status() is None:
        raise ConfigError(f"{key}: {describe_placement(nodes, bundle, need, run.placement_strategy)}")
    from ray.autoscaler.sdk import request_resources

    def observe() -> tuple[int, int]:
        status = autoscaler_status()
        launching = (
            0
            if status is None
            else (sum(launch.count for launch in status.pending_launches) + len(status.pending_nodes))
        )
        return placeable_workers(alive(), bundle, run.placement_strategy), launching

    def say(message: str) -> None:
        print(f"began-dist: {message}", file=sys.stderr, flush=True)

    started = time.monotonic()
    request_resources(bundles=[{k: float(v) for k, v in bundle.items()}] * most)
    try:
        placeable = wait_for_autoscaler(observe, need, say, wait_s=wait_s)
    finally:
        request_resources(bundles=[])  # the placement group Ray Train makes next keeps the demand
    if placeable < need:
        raise ConfigError(
            f"{key}: {describe_placement(alive(), bundle, need, run.placement_strategy)} "
            f"after waiting {time.monotonic() - started:.0f} s for the autoscaler (it launches nodes "
            f"up to its max_workers, for node types that fit a worker)"
        )
