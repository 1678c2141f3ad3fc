"""Data-parallel scaling on Ray Train: 1 worker vs 2 workers on 2 nodes, and a GPU projection.

    python benchmarks/ddp_speed.py [--steps 60] [--sizes 32 64]

Starts its own Ray cluster on 127.0.0.1 (a head with no CPUs and two 1-CPU worker
nodes, token auth with a temporary token), trains the BEGAN step with 1 worker and
with 2 workers (one per node, the same per-worker batch of 16), and prints:
images/s, scaling efficiency, bytes all-reduced per step, the measured gloo
all-reduce bandwidth for that many bytes and its share of the step; then the
efficiency projected for 8 GPU nodes from the bytes per step, a stated interconnect
bandwidth and a stated GPU step time.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: stay on 127.0.0.1

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from began_dist import families  # noqa: E402,F401  (registers the families' config rules)
from began_dist.config import load_config  # noqa: E402
from began_dist.models.began import build_networks, count_parameters  # noqa: E402

PER_WORKER_BATCH = 16
# Projection assumptions (stated, not measured here): a 64 px, n = 64 BEGAN step at batch 16 per GPU
# on an A100-class GPU, and 100 Gbit/s Ethernet between nodes.
GPU_STEP_S = 0.012
NETWORK_BYTES_PER_S = 100e9 / 8


def start_cluster():
    import ray
    from ray._raylet import Config
    from ray.cluster_utils import Cluster

    token = os.path.join(tempfile.mkdtemp(), "token")
    with open(token, "w") as handle:
        handle.write(secrets.token_hex(32))
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token)
    Config.initialize("")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1",
                                                             "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", resources={"train_slot": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster


def model_args(filters: int) -> list[str]:
    return [f"model.filters={filters}", f"model.nz={filters}", f"model.nh={filters}", "model.convs_per_scale=2"]


def train_images_per_s(size: int, filters: int, workers: int, steps: int, root: str) -> float:
    from began_dist.distributed.ray_train import run_on_ray

    run_dir = os.path.join(root, f"{size}px-{workers}w")
    cfg = load_config(None, [
        *model_args(filters), f"model.image_size={size}", "data.glyphs=512",
        f"train.batch_size={PER_WORKER_BATCH * workers}",
        f"train.steps={steps}", "train.log_every=10", f"train.checkpoint_every={steps}", f"train.sample_every={steps}",
        f"run.workers={workers}", "run.worker_resources.train_slot=1", f"run.dir={run_dir}",
    ])
    run_on_ray(cfg)
    with open(os.path.join(run_dir, "stats.jsonl")) as handle:
        rates = [json.loads(line)["images_per_s"] for line in handle][1:]  # the first interval holds warm-up
    return statistics.median(rates)


def allreduce_bytes_per_step(size: int, filters: int) -> int:
    cfg = load_config(None, [*model_args(filters), f"model.image_size={size}"])
    G, D = build_networks(cfg.model)
    return 4 * (count_parameters(G) + count_parameters(D))  # fp32 grads of D (D phase) and G (G phase)


def _gloo_worker(rank: int, numel: int, repeats: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    tensor = torch.ones(numel)
    dist.all_reduce(tensor)
    started = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(tensor)
    if rank == 0:
        out.put((time.perf_counter() - started) / repeats)
    dist.destroy_process_group()


def gloo_allreduce_seconds(num_bytes: int, repeats: int = 10) -> float:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    out = context.Queue()
    processes = [context.Process(target=_gloo_worker, args=(r, num_bytes // 4, repeats, port, out)) for r in (0, 1)]
    for process in processes:
        process.start()
    seconds = out.get(timeout=600)
    for process in processes:
        process.join()
    return seconds


def projected_efficiency(num_bytes: int, nodes: int = 8, overlap: float = 0.0) -> float:
    """Ring all-reduce moves 2 (N - 1) / N of the bytes per node; `overlap` of it hides behind backward."""
    comm_s = 2 * (nodes - 1) / nodes * num_bytes / NETWORK_BYTES_PER_S
    return GPU_STEP_S / (GPU_STEP_S + (1 - overlap) * comm_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="steps per run (the first 10 are warm-up)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--filters", type=int, default=32, help="n (= Nz = Nh); the GPU projection uses n = 64")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the cluster on the way out
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", file=sys.stderr)
    cluster = start_cluster()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as root:
            for size in args.sizes:
                one = train_images_per_s(size, args.filters, 1, args.steps, root)
                two = train_images_per_s(size, args.filters, 2, args.steps, root)
                num_bytes = allreduce_bytes_per_step(size, args.filters)
                comm_s = gloo_allreduce_seconds(num_bytes)
                step_s = 2 * PER_WORKER_BATCH / two
                gpu_bytes = allreduce_bytes_per_step(size, 64)
                rows.append((size, one, two, two / (2 * one), num_bytes, num_bytes / comm_s, comm_s / step_s,
                             projected_efficiency(gpu_bytes), projected_efficiency(gpu_bytes, overlap=0.8)))
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
    header = ("px", "1w img/s", "2w img/s", "scaling", "MB/step", "gloo MB/s", "comm share",
              "8-GPU proj.", "8-GPU proj. 80% overlap")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for size, one, two, eff, nbytes, bw, share, proj, proj_overlap in rows:
        print(f"| {size} | {one:.1f} | {two:.1f} | {eff:.0%} | {nbytes / 1e6:.1f} | {bw / 1e6:.0f} | {share:.1%} "
              f"| {proj:.0%} | {proj_overlap:.0%} |")
    print(f"\nprojection: {GPU_STEP_S * 1e3:.0f} ms GPU step (assumed), {NETWORK_BYTES_PER_S * 8 / 1e9:.0f} Gbit/s "
          "network, ring all-reduce over 8 nodes; 'overlap' = DDP bucketing hiding that share behind backward")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
