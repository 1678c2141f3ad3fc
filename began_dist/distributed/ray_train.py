"""Ray Train launcher: the per-worker loop under `TorchTrainer` (Train V2).

    began-dist train --config C.yaml --workers 4 [--gpus-per-worker 1] [--address ray://...]

Each worker runs `began_dist.train.loop.Trainer` unchanged; G and D each get their
own DDP (gloo on CPU, NCCL on GPU); the global batch is split by docs/design.md's
rule. Without `run.address` a local Ray cluster is started on 127.0.0.1 and
stopped afterwards. Checkpoints live once, in RUN_DIR/checkpoints (on a shared
filesystem or an object store every node reaches), so `--resume RUN_DIR` (any worker
count) and worker-failure restarts continue from the newest one. Ray's own storage
(its run state) is RUN_DIR/ray, a URI when the run directory is one.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import sys

from began_dist import storage
from began_dist.config import ConfigError, to_container
from began_dist.distributed import refusals
from began_dist.distributed.placement import check_placement, worker_bundle
from began_dist.train.result import RunResult, Status

RAY_RUN_NAME = "train"  # fixed, so fitting again with the same storage path resumes


# RUN_DIR/<this>: "TOKEN [GROUPS]": a token the driver writes and each worker reads, then how many worker
# groups of that driver's run have started (rank 0 counts them, so a restarted group can say so in log.txt)
RUN_DIR_MARKER = ".began-dist-driver"


def mark_run_dir(run_dir: str) -> str:
    """Write a fresh token into RUN_DIR for the workers to find (driver side); returns it."""
    token = secrets.token_hex(8)
    storage.write_text(storage.join(run_dir, RUN_DIR_MARKER), token)
    return token


def join_run_dir(run_dir: str, token: str) -> tuple[str, str]:
    """(refusal, note) for a worker group that starts: every worker checks that its node sees the driver's
    RUN_DIR (its token), and the workers agree before any training step, so they stop together.

    refusal: '' when every node sees it, else why not, naming run.dir and the nodes (checked by every
    worker group, since nodes may join later). note: on rank 0 of a group that is not the driver's first
    (Ray Train restarted it after a worker or node failure, or resized it), a line for log.txt saying so.
    """
    import ray

    from began_dist.distributed import comm

    marker = storage.join(run_dir, RUN_DIR_MARKER)
    try:
        mark = storage.read_text(marker).split()
    except OSError:
        mark = []
    seen = mark[:1] == [token]
    context = ray.get_runtime_context()
    node = f"node {ray.util.get_node_ip_address()} ({context.get_node_id()[:12]})"
    nodes = comm.gather_objects((seen, node))  # also the barrier: every worker read the mark before it changes
    blind = sorted({where for ok, where in nodes if not ok})
    if blind:
        return (
            f"run.dir={storage.display(run_dir)}: not visible from {', '.join(blind)}; a run directory "
            "on a cluster must be storage every node sees (a shared filesystem, or s3:// / gs://)"
        ), ""
    if comm.rank() != 0:
        return "", ""
    groups = int(mark[1]) + 1 if len(mark) > 1 else 1
    try:
        storage.write_text(marker, f"{token} {groups}")
    except (OSError, storage.StorageError):
        pass  # the count only words log.txt; the loop's first write reports a store that fails, as a status
    if groups == 1:
        return "", ""
    on = ", ".join(sorted({where.split()[1] for _, where in nodes}))
    return "", (
        f"worker group restart {groups - 1} (Ray Train started it after a worker or node failure, or a resize): "
        f"{len(nodes)} workers on {on}, continuing from the newest checkpoint"
    )


class _NoReportLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Reporting training result")


def quiet_report_lines() -> None:
    """Drop Ray Train's INFO line per report per worker, which buries the run's own progress lines
    on the driver's console (Ray 2.60's train/v2/_internal/execution/context.py names its logger
    after its file)."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).addFilter(_NoReportLines())


def worker_entry(config: dict, ray_checkpoints: bool = False, token: str = "", stop_flag=None) -> RunResult:
    """What each Ray Train worker runs; rank 0's RunResult is the run's.

    `ray_checkpoints`: hand checkpoints to Ray too (a nested Tune trial; distributed/reporting.py).
    `token`: the driver's mark in RUN_DIR (mark_run_dir); a run directory this node cannot see
    is a refusal returned as a status, which Ray does not retry. `stop_flag`: the driver's StopFlag
    (distributed/stops.py), which rank 0 reads at each stop point.
    """
    import ray
    import ray.train.torch

    from began_dist.distributed import comm, elastic
    from began_dist.distributed.reporting import RayTrainReporter
    from began_dist.train.loop import Trainer, run_trainer

    quiet_report_lines()
    refusal, note = join_run_dir(config["run"]["dir"], token) if token else ("", "")
    refusal = refusal or refusals.agreed(config["run"]["dir"], token)  # a bad shard a failed attempt met
    if refusal:
        return RunResult(Status.refused, run_dir=config["run"]["dir"], message=refusal)

    device = ray.train.torch.get_device()
    if device.type == "cuda":  # each rank its own GPU: NCCL cannot run two ranks on one device
        import torch

        gpu = str(torch.cuda.get_device_properties(device).uuid)
        where = comm.gather_objects((ray.get_runtime_context().get_node_id(), gpu))
        if len(set(where)) < len(where):
            return RunResult(Status.refused, run_dir=config["run"]["dir"],
                             message=f"run.gpus_per_worker: ranks share a CUDA device (node, GPU per rank): {where}")
    # A non-finite loss is returned as a status, not raised: Ray retries every exception,
    # and a NaN run would only NaN again. A bad shard likewise (distributed/refusals.py).
    def attempt() -> RunResult:
        reporter = RayTrainReporter(ray_checkpoints, stop_flag, notes=[note] if note else [])
        trainer = Trainer(config, reporter, device=device)
        trainer.notes.append(elastic.resize_note(trainer))  # an elastic run: why this worker group started
        return run_trainer(trainer, progress=False)

    result = refusals.run_refusing_bad_data(attempt, config["run"]["dir"], token,
                                            ray.train.get_context().get_world_size())
    if result.status is Status.done:
        result.debug["worker_nodes"] = comm.gather_objects(ray.get_runtime_context().get_node_id())
    return result


JOB_API_SCHEMES = ("http://", "https://")
# How long the placement check waits for an autoscaler to add nodes (cloud GPU nodes take minutes
# to boot and run their setup commands), and how long it waits while the autoscaler launches
# nothing before it concludes that no more nodes will come (the v2 autoscaler reconciles every 5 s).


def is_job_api_url(address: str) -> bool:
    """True for the job API / dashboard URL (`http://HEAD:8265`), which `ray job submit` takes
    but `ray.init` rejects: a cluster address is the GCS `HOST:PORT`, `auto` or `ray://HOST:PORT`."""
    return address.strip().lower().startswith(JOB_API_SCHEMES)


def cluster_address(address: str, environ=os.environ) -> str:
    """The cluster address began-dist joins: `run.address`, else RAY_ADDRESS; '' starts a local cluster.

    RAY_ADDRESS set to the job API URL (what `ray job submit` reads, e.g. after
    `eval "$(cluster/testbed env)"`) is not an address a driver can join, so it counts as
    unset; inside a `ray job submit` job Ray itself sets RAY_ADDRESS to the GCS address
    (ray/dashboard/modules/job/job_supervisor.py). A job API URL given as `run.address`
    is refused, since the user meant a cluster.
    """
    if address:
        if is_job_api_url(address):
            raise ConfigError(
                f"run.address={address}: that is the job API URL, not a cluster address; submit the command "
                f"through it (`ray job submit --address {address} -- began-dist train ...`), or give the "
                "cluster's GCS address HOST:6379 (ray://HOST:10001 for Ray Client)"
            )
        return address
    from_env = environ.get("RAY_ADDRESS", "")
    return "" if is_job_api_url(from_env) else from_env


def connect(address: str) -> bool:
    """Join the cluster at `address` (else RAY_ADDRESS), or start a local one on 127.0.0.1; True if started here."""
    import ray

    if ray.is_initialized():
        return False
    target = cluster_address(address)
    if target:
        ray.init(address=target)
        return False
    job_api = os.environ.pop("RAY_ADDRESS", None)  # ray.init would read the job API URL from it
    if job_api:
        print(
            f"began-dist: RAY_ADDRESS={job_api} is the job API URL (for `ray job submit`), not a cluster "
            "address: starting a local Ray cluster; to train on that cluster, submit this command with "
            "`ray job submit -- began-dist ...`",
            file=sys.stderr,
            flush=True,
        )
    try:
        # "local": a new cluster even when another one's address is in /tmp/ray/ray_current_cluster
        # (`ray start` writes it); with no address ray.init() would join that cluster instead.
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=True, dashboard_host="127.0.0.1")
    finally:
        if job_api:
            os.environ["RAY_ADDRESS"] = job_api
    return True


def ray_storage(run_dir: str):
    """(storage_path, storage_filesystem) of Ray's run state, RUN_DIR/ray.

    For a URI the filesystem is built here from the whole URI, `?query` included (the store's
    endpoint and options), and Ray gets the path inside it.
    """
    path = storage.join(run_dir, "ray")
    if storage.is_local(path):
        return path, None
    fs, inner = storage.filesystem(path)
    return inner, fs


def run_config(run, max_failures: int, callbacks: list):
    """Ray Train's RunConfig of a run: its storage (RUN_DIR/ray), failure budget and checkpoints kept."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    ray_path, ray_fs = ray_storage(run.dir)
    return RunConfig(
        name=RAY_RUN_NAME,
        storage_path=ray_path,
        storage_filesystem=ray_fs,
        failure_config=FailureConfig(max_failures=max_failures, controller_failure_limit=run.controller_failure_limit),
        checkpoint_config=CheckpointConfig(num_to_keep=run.checkpoints_to_keep),
        callbacks=callbacks,
    )


def run_on_ray(cfg, callbacks: tuple = (), stop_flag=None) -> RunResult:
    """Train `cfg` with `cfg.run.workers` Ray Train workers; returns rank 0's RunResult
    (status failed when Ray gives up: workers failed more than run.max_failures times).

    `callbacks`: Ray Train callbacks, e.g. Tune's `TuneReportCallback` when this run
    is a nested Tune trial (its storage, RUN_DIR/ray, is then the trial's own), and
    `stop_flag` the sweep's StopFlag, which asks it to save and stop (tune/stops.py).
    """
    run = cfg.run
    if not cluster_address(run.address):
        # A local cluster: keep every process on 127.0.0.1. Ray reads this when first imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from ray.train import ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    from began_dist.distributed.elastic import scaling
    from began_dist.distributed.stops import DriverStops, WorkerSignals

    use_gpu = run.gpus_per_worker > 0
    workers, max_failures, monitor = scaling(run)  # a fixed size, or an elastic range and its monitor
    started_here = connect(run.address)
    try:
        check_placement(run)
        resources = worker_bundle(run)
        token = mark_run_dir(run.dir)
        stops = DriverStops(stop_flag)  # SIGINT/SIGTERM: the workers save the last completed step, exit 130
        trainer = TorchTrainer(
            functools.partial(worker_entry, ray_checkpoints=bool(callbacks), token=token, stop_flag=stops.flag),
            train_loop_config=to_container(cfg),
            # A collective that waits longer than this for a peer (a cut-off or dead node) fails, so the
            # worker group restarts instead of hanging until Ray's health check removes the node.
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=run.collective_timeout_s),
            scaling_config=ScalingConfig(
                num_workers=workers,
                elastic_resize_monitor_interval_s=run.resize_interval_s,
                use_gpu=use_gpu,
                resources_per_worker=resources,
                placement_strategy=run.placement_strategy,
            ),
            run_config=run_config(run, max_failures, [*callbacks, *monitor, WorkerSignals()]),
        )
        try:
            result = stops.fit(trainer)
        except TrainingFailedError as error:
            return refusals.after_failure(run.dir, token) or RunResult(
                Status.failed, run_dir=run.dir, message=f"Ray Train gave up: {error}")
        finally:
            refusals.clear(run.dir)
        if isinstance(result.return_value, RunResult):
            return result.return_value
        # No worker result (Ray found the run already finished in its storage): the newest checkpoint is the end.
        return RunResult(Status.done, run_dir=run.dir)
    finally:
        if started_here:
            import ray

            ray.shutdown()
