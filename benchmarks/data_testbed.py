"""The `testbed` rows of benchmarks/data_speed.py (opt-in: root, and the machine's one testbed free).

    .venv/bin/python benchmarks/data_speed.py --rows testbed

Brings `cluster/testbed up 3` and always down. A dataset of `--tb-images` PNGs at `--size` px
is prepared into the testbed's store (8 Arrow shards). On host1, with its link capped at
1 Gbit/s, then 100 Mbit/s (`cluster/testbed limit`), one process measures, in this order:

- read: one epoch of random global batches of `--batch` -> float32 [-1, 1] (no model), from
  the store through an empty node cache (cold: every shard fetched and verified on first
  need), the same cache again (warm), local shards on host1's disk and an in-RAM tensor:
  images/s and MB/s of shard data, against the link's rate and what a 12 ms step at batch
  64 needs; the cold read also as before `data.fetch_workers` (one shard at a time, 4 MB
  reads), and "fetch MB/s": shard bytes over the time to the first batch, which a random
  batch can only read once every shard is fetched;
- steps/s of a small BEGAN (`SMALL`, `--size` px, batch `--batch`, one torch thread)
  reading through the `Prefetcher` (depth 2): the time to the first step (opening the
  dataset and its first batch: cold, fetching every shard it touches), then `--tb-steps`
  steps timed after it, the steady state a run sees: from an empty cache (cold), local
  shards, warm cache and in-RAM (the last three alternated twice, best of each, so load
  from other jobs falls on all).

`prepare`: `--prepare-images` PNGs at 2x `--size` px in /var/tmp (the machine's files,
which every host sees) -> 8 Arrow shards in the store: one process on host1, and as Ray
tasks from a driver on host0 with `--workers 1` (one host at a time) and 2 (tasks spread
over two hosts); two workers are warmed up outside the timing.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid

import torch

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))

from began_dist import uris  # noqa: E402
from began_dist.config import load_config  # noqa: E402
from began_dist.data import prepare as prep  # noqa: E402
from began_dist.data.dataset import InMemoryDataset  # noqa: E402
from began_dist.data.prefetch import Prefetcher  # noqa: E402
from began_dist.data.reader import ShardedDataset  # noqa: E402
from began_dist.data.sampler import GlobalBatchSampler, LatentSource  # noqa: E402

CPU = torch.device("cpu")
SMALL = ["model.filters=4", "model.nz=16", "model.nh=16", "model.convs_per_scale=1"]
LINKS = (("1gbit", "1 Gbit/s", 125e6), ("100mbit", "100 Mbit/s", 12.5e6))
STEP_NEED = 64 / 0.012  # images/s a 12 ms step at batch 64 consumes
BEFORE = "s3, cold, before"  # one shard fetched at a time, 4 MB reads: the cache before data.fetch_workers


# -- on host1 -----------------------------------------------------------------------------------
def small_began(size: int, batch: int):
    from began_dist import families  # noqa: F401  (registers the families' config rules)
    from began_dist.families import get_family

    cfg = load_config(None, [f"model.image_size={size}", "model.channels=3", f"train.batch_size={batch}",
                             "train.device=cpu", *SMALL])
    family = get_family(cfg.model.family)(cfg, CPU)
    latents = LatentSource(0, family.latent_size, batch)
    family.train_step(torch.rand(batch, 3, size, size) * 2 - 1, latents.next(family.latents_per_step, CPU))
    return family, latents


def steps_per_s(open_dataset, model, batch: int, steps: int) -> tuple[float, float, float]:
    """(seconds to the first step, steps/s and data wait per step after it) of `steps` + 1 training steps.

    The first step's time includes opening the dataset and its first batch (cold: fetching every shard
    a random batch touches); the rate is the steady state after it, as a run sees it for its whole length."""
    family, latents = model
    started = time.perf_counter()
    dataset = open_dataset()
    with Prefetcher(dataset, GlobalBatchSampler(len(dataset), batch, seed=1), CPU, depth=2) as ahead:
        family.train_step(ahead.next().real, latents.next(family.latents_per_step, CPU))
        steady = time.perf_counter()
        first = steady - started
        ahead.take_wait_s()
        for _ in range(steps):
            family.train_step(ahead.next().real, latents.next(family.latents_per_step, CPU))
        rate, wait = steps / (time.perf_counter() - steady), ahead.take_wait_s() / steps
    getattr(dataset, "close", lambda: None)()
    return first, rate, wait


def read_s(open_dataset, batch: int, block: int = 0) -> tuple[float, float]:
    """Seconds to open the dataset and read one epoch of random global batches, and to its first batch
    (cold: random batches read every shard, so that is the time to fetch them all). `block`: the cache's
    read size during it (0: the default)."""
    from data_speed import cache_reads, read_epoch

    started, first = time.perf_counter(), []
    with cache_reads(block):
        dataset = open_dataset()
        opened = time.perf_counter() - started
        seconds = read_epoch(dataset, batch, first) + opened
    getattr(dataset, "close", lambda: None)()
    return seconds, first[0] + opened


def host_rows(uri: str, local: str, cache: str, size: int, batch: int, steps: int) -> list[dict]:
    """Every read and step row for one link setting (runs on host1; prints nothing)."""
    import pyarrow.fs as pafs

    torch.set_num_threads(1)
    if not os.path.isdir(local):  # local shards on host1's disk, copied once, untimed
        fs, base = pafs.FileSystem.from_uri(uri)
        os.makedirs(local)
        pafs.copy_files(base, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    local_set = ShardedDataset(local)
    ram = InMemoryDataset(local_set.batch(torch.arange(len(local_set))))
    nbytes = sum(entry["bytes"] for entry in local_set.manifest["shards"])
    model = small_began(size, batch)
    sources = {BEFORE: lambda: ShardedDataset(uri, cache_dir=f"{cache}-before", fetch_workers=1),
               "s3, cold cache": lambda: ShardedDataset(uri, cache_dir=f"{cache}-read"),
               "s3, warm cache": lambda: ShardedDataset(uri, cache_dir=f"{cache}-read"),
               "local shards": lambda: ShardedDataset(local), "in-RAM tensor": lambda: ram}
    rows = {}
    for name, make in sources.items():  # in this order: the cold read fills the cache
        seconds, first = read_s(make, batch, 1 << 22 if name == BEFORE else 0)
        rows[name] = {"source": name, "images": len(ram), "bytes": nbytes, "read_s": seconds, "first_s": first,
                      "steps": None, "wait": None, "first_step_s": None}
    first, rate, wait = steps_per_s(lambda: ShardedDataset(uri, cache_dir=f"{cache}-steps"), model, batch, steps)
    rows["s3, cold cache"].update(steps=rate, wait=wait, first_step_s=first)
    for _ in range(2):
        for name in ("in-RAM tensor", "s3, warm cache", "local shards"):
            first, rate, wait = steps_per_s(sources[name], model, batch, steps)
            if rate > (rows[name]["steps"] or 0):
                rows[name].update(steps=rate, wait=wait, first_step_s=first)
    return list(rows.values())


# -- on host0 (a Ray driver) and host1 ----------------------------------------------------------
def host_prepare(source: str, out: str, size: int, workers: int) -> dict:
    """images/s of `prepare` SOURCE -> OUT (8 shards) in this process (workers 0) or as Ray tasks."""
    options = prep.PrepareOptions(size=size, shards=8, jobs=1)
    runner, nodes = None, set()
    if workers:
        import ray

        from began_dist.distributed.ray_prepare import ray_runner

        ray.init()  # RAY_ADDRESS: the testbed's cluster
        prep.prepare(source, uris.join(out, "warm-up"), prep.PrepareOptions(size=size, shards=2, jobs=1, limit=4),
                     ray_runner(2))  # start and import in two workers
        runner = ray_runner(workers)
    warm = _write_tasks() if workers else {}
    started = time.perf_counter()
    prep.prepare(source, uris.join(out, "timed"), options, runner)
    seconds = time.perf_counter() - started
    if workers:
        nodes = {node for task, node in _write_tasks().items() if task not in warm}  # the timed tasks' hosts
        ray.shutdown()
    return {"images": len(os.listdir(source)), "seconds": seconds, "hosts": len(nodes) if workers else 1}


def _write_tasks() -> dict[str, str]:
    """task id -> node id of this Ray job's shard tasks so far."""
    import ray
    from ray.util.state import list_tasks

    job = ray.get_runtime_context().get_job_id()
    return {task.task_id: task.node_id for task in list_tasks(filters=[("job_id", "=", job)], limit=10000)
            if "write_one" in task.func_or_class_name}


# -- on the machine ------------------------------------------------------------------------------
def on_host(bed, host: str, call: str) -> object:
    """Run `data_testbed.<call>` in `host` and return its JSON result."""
    code = f"import json, sys; sys.path.insert(0, {BENCH!r}); import data_testbed as t; print(json.dumps(t.{call}))"
    result = bed.python(host, code, timeout=1200)
    if result.returncode:
        raise RuntimeError(f"{host}: {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_testbed(args) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(BENCH), "tests"))
    from data_speed import synthetic_images, write_folder
    from testbed_support import Testbed, unavailable

    reason = unavailable()
    if reason:
        print(f"\ntestbed: skipped ({reason})")
        return
    source = tempfile.mkdtemp(prefix="data-speed-", dir="/var/tmp")  # the machine's disk: every host sees it
    os.chmod(source, 0o755)
    bed = Testbed()
    bed.up(3)
    try:
        env = bed.status()["env"]
        os.environ.update({key: value for key, value in env.items() if key.startswith("AWS_")})
        run = uris.join(env["BEGAN_TESTBED_STORE"], f"bench-{uuid.uuid4().hex[:8]}")
        with tempfile.TemporaryDirectory() as tmp:
            write_folder(synthetic_images(args.tb_images, args.size), tmp, ".png")
            prep.prepare(tmp, uris.join(run, "data"), prep.PrepareOptions(size=args.size, shards=8, jobs=1))
        write_folder(synthetic_images(args.prepare_images, 2 * args.size, seed=1), source, ".png")
        results = {}
        for rate, _, _ in LINKS:
            bed.cli("limit", "host1", rate)
            results[rate] = on_host(bed, "host1", f"host_rows({uris.join(run, 'data')!r}, '/mnt/bench-local', "
                                    f"'/mnt/bench-cache-{rate}', {args.size}, {args.batch}, {args.tb_steps})")
        bed.cli("limit", "host1", "off")
        prepared = [("1 process on host1", on_host(bed, "host1", f"host_prepare({source!r}, "
                                                  f"{uris.join(run, 'p0')!r}, {args.size}, 0)"))]
        for workers in (1, 2):
            prepared.append((f"Ray tasks, --workers {workers}", on_host(
                bed, "host0", f"host_prepare({source!r}, {uris.join(run, f'p{workers}')!r}, {args.size}, {workers})")))
    finally:
        bed.down()
        shutil.rmtree(source, ignore_errors=True)
    print_results(args, results, prepared)


def print_results(args, results: dict, prepared: list) -> None:
    first = results[LINKS[0][0]][0]
    print(f"\ntestbed: host1 reads {first['images']} images at {args.size} px ({first['bytes'] / 1e6:.1f} MB, 8 Arrow "
          f"shards) from the store through its node cache; small BEGAN ({', '.join(SMALL)}), batch {args.batch}, "
          f"{args.tb_steps} steps, prefetch depth 2, 1 torch thread; load {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs")
    print("| link | source | read MB/s | of link | fetch MB/s | of link | read img/s | 12 ms step at batch 64 | "
          "to 1st step | steps/s | vs in-RAM | wait/step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    verdicts = []
    for rate, label, link in LINKS:
        rows = {row["source"]: row for row in results[rate]}
        ram = rows["in-RAM tensor"]["steps"]
        for row in rows.values():
            mb, images = row["bytes"] / row["read_s"] / 1e6, row["images"] / row["read_s"]
            cold, fetch = "cold" in row["source"], row["bytes"] / row["first_s"]
            share = f"{mb * 1e6 / link:.0%}" if cold else "-"
            fetched = f"{fetch / 1e6:,.1f} | {fetch / link:.0%}" if cold else "- | -"
            steps = "- | - | - | -" if row["steps"] is None else (
                f"{row['first_step_s']:.2f} s | {row['steps']:.2f} | {row['steps'] / ram:.0%} | "
                f"{row['wait'] * 1e3:,.0f} ms")
            print(f"| {label} | {row['source']} | {mb:,.1f} | {share} | {fetched} | {images:,.0f} | "
                  f"{'delivers' if images >= STEP_NEED else 'too slow'} | {steps} |")
        cold = rows["s3, cold cache"]["bytes"] / rows["s3, cold cache"]["read_s"]
        warm = rows["s3, warm cache"]["steps"] / ram
        verdicts.append(f"{label}: cold read {cold / link:.0%} of the link (goal >= 80%: "
                        f"{'met' if cold >= 0.8 * link else 'NOT met'}), warm steps/s {warm:.0%} of in-RAM "
                        f"(goal >= 95%: {'met' if warm >= 0.95 else 'NOT met'})")
    print("goals: " + "; ".join(verdicts))
    print(f"a 12 ms step at batch 64 needs {STEP_NEED:,.0f} img/s ({STEP_NEED * args.size ** 2 * 3 / 1e6:,.0f} MB/s "
          f"at {args.size} px RGB)")
    print(f"\nprepare on the testbed: {prepared[0][1]['images']} PNGs at {2 * args.size} px -> {args.size} px Arrow, "
          "8 shards, into the store")
    print("| writer | hosts used | img/s | vs 1 process |")
    print("|---|---|---|---|")
    base = prepared[0][1]["images"] / prepared[0][1]["seconds"]
    for label, row in prepared:
        rate = row["images"] / row["seconds"]
        print(f"| {label} | {row['hosts']} | {rate:,.0f} | {rate / base:.2f}x |")
