"""Ray Train launcher: the per-worker loop under `TorchTrainer` (Train V2).

    began-dist train --config C.yaml --workers 4 [--gpus-per-worker 1] [--address ray://...]

Each worker runs `began_dist.train.loop.Trainer` unchanged; G and D each get their
own DDP (gloo on CPU, NCCL on GPU); the global batch is split by the Contract's
rule. Without `run.address` a local Ray cluster is started on 127.0.0.1 and
stopped afterwards. Ray's own storage (its checkpoint copies, run state) is
RUN_DIR/ray, so `--resume RUN_DIR` (any worker count) and worker-failure restarts
continue from the newest checkpoint.
"""

from __future__ import annotations

import os

from began_dist.config import ConfigError, to_container

RAY_RUN_NAME = "train"  # fixed, so fitting again with the same storage path resumes


def worker_entry(config: dict) -> dict:
    """What each Ray Train worker runs."""
    import ray
    import ray.train.torch

    from began_dist.distributed import comm
    from began_dist.train.loop import NonFiniteLoss, Trainer
    from began_dist.train.reporting import RayTrainReporter

    trainer = Trainer(config, RayTrainReporter(), device=ray.train.torch.get_device())
    try:
        result = trainer.run(progress=False)
    except NonFiniteLoss as error:
        # Returned, not raised: Ray retries every exception, and a NaN run would only NaN again.
        return {"status": "non_finite", "error": str(error), "checkpoint": trainer.last_checkpoint}
    result["worker_nodes"] = comm.gather_objects(ray.get_runtime_context().get_node_id())
    return result


def connect(address: str) -> bool:
    """Join the cluster at `address`, or start a local one on 127.0.0.1; True if started here."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS", "")  # set inside `ray job submit` jobs
    if address:
        ray.init(address=address)
        return False
    # "local": a new cluster even when another one's address is in /tmp/ray/ray_current_cluster
    # (`ray start` writes it); with no address ray.init() would join that cluster instead.
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=True, dashboard_host="127.0.0.1")
    return True


def check_placement(run) -> None:
    """Refuse at once what the cluster can never place, instead of waiting forever."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    total_cpu = sum(n.get("CPU", 0) for n in nodes)
    total_gpu = sum(n.get("GPU", 0) for n in nodes)
    asked = f"{run.workers} workers x {run.cpus_per_worker} CPU, {run.gpus_per_worker} GPU"
    has = f"the cluster has {total_cpu:g} CPU and {total_gpu:g} GPU on {len(nodes)} node(s)"
    fitting_nodes = sum(
        n.get("CPU", 0) >= run.cpus_per_worker and n.get("GPU", 0) >= run.gpus_per_worker for n in nodes
    )
    if run.placement_strategy == "STRICT_SPREAD" and fitting_nodes < run.workers:
        raise ConfigError(f"run.placement_strategy=STRICT_SPREAD: cannot place {asked} on separate nodes: {has}")
    if (
        run.workers * run.cpus_per_worker > total_cpu
        or run.workers * run.gpus_per_worker > total_gpu
        or not fitting_nodes
    ):
        raise ConfigError(f"run.workers: cannot place {asked}: {has}")


def run_on_ray(cfg, callbacks: tuple = ()) -> dict:
    """Train `cfg` with `cfg.run.workers` Ray Train workers; returns rank 0's result.

    `callbacks`: Ray Train callbacks, e.g. Tune's `TuneReportCallback` when this run
    is a nested Tune trial (its storage, RUN_DIR/ray, is then the trial's own).
    """
    run = cfg.run
    if not (run.address or os.environ.get("RAY_ADDRESS")):
        # A local cluster: keep every process on 127.0.0.1. Ray reads this when first imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = run.gpus_per_worker > 0
    started_here = connect(run.address)
    try:
        check_placement(run)
        resources = {"CPU": run.cpus_per_worker, **dict(run.worker_resources)}
        if use_gpu:
            resources["GPU"] = run.gpus_per_worker
        trainer = TorchTrainer(
            worker_entry,
            train_loop_config=to_container(cfg),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=run.workers,
                use_gpu=use_gpu,
                resources_per_worker=resources,
                placement_strategy=run.placement_strategy,
            ),
            run_config=RunConfig(
                name=RAY_RUN_NAME,
                storage_path=os.path.join(run.dir, "ray"),
                failure_config=FailureConfig(
                    max_failures=run.max_failures, controller_failure_limit=run.controller_failure_limit
                ),
                checkpoint_config=CheckpointConfig(num_to_keep=run.checkpoints_to_keep),
                callbacks=list(callbacks),
            ),
        )
        result = trainer.fit()
        return result.return_value or {}
    finally:
        if started_here:
            import ray

            ray.shutdown()

