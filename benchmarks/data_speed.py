"""How fast each data path delivers training-ready batches, next to what a training step consumes.

    .venv/bin/python benchmarks/data_speed.py                  # read, shuffle, prefetch: ~2 min
    .venv/bin/python benchmarks/data_speed.py --size 128 --images 4096 --workers 4
    .venv/bin/python benchmarks/data_speed.py --rows startup --startup-gb 1.5   # opt-in: writes 1.5 GB

Tables (`--rows`, comma-separated; `--help` lists them):

`read`: every row times the same thing: the sampler's next global batch of random indices
-> uint8 images -> float32 in [-1, 1] (`to_model_range`), on the CPU. Rows:
- an in-RAM numpy array (the ceiling: the reader's gather and convert without files), and
  the torch tensor the built-in sources use;
- Arrow and HDF5 shards (`began-dist prepare` output) in this process, and through a
  DataLoader with worker processes;
- an image folder decoded on the fly: PNG and JPEG stored at the target size (decode
  cost only, the most favourable case for a folder), and CelebA-sized 178x218 JPEGs
  cropped and resized as `prepare` does (what training from img_align_celeba costs);
- the BEGAN training step at the same size (this repo's step, default model sizes),
  i.e. the images/s a reader must at least deliver.
All baselines are measured in the same run, on the same (possibly shared) CPU.

`shuffle`: the sampler's permutation at N = 10^6, 10^8, 10^9 images: the Feistel bijection
(memory held between batches, ns per index in a batch of 64 and in bulk, the first batch
of an epoch) against `torch.randperm` where N int64 fit in `--randperm-max`.

`prefetch`: steps/s and data wait per step of a loop whose step takes `--step-ms` (the host
waiting on a GPU step: a sleep, which releases the GIL as a CUDA sync does), reading Arrow
shards and a CelebA-like JPEG folder, with and without `Prefetcher`.

`startup` (opt-in; writes `--startup-gb` of Arrow shards to a temp dir): seconds from
opening the dataset to the first batch, with an empty verified-shard record (every shard
hashed) and with the record in place (stat only).

`remote`: s3:// shards through the node cache, from moto's S3 server on 127.0.0.1 (a
separate process; `pip install -e .[testbed]`): opening the dataset (manifest and
listing), then one epoch of random global batches from an empty cache (every shard
fetched and verified on first need) and again with the cache warm (a new reader), beside
the same shards on local disk; images/s and MB/s of shard data over the epoch, and the
time to the first batch (cold: random batches read every shard, so all are fetched before
it). The cold read runs twice: as before `data.fetch_workers` (one shard after another,
4 MB reads) and with the defaults (shards fetched at once, 16 MB reads). No link cap: the
loopback, so this measures the cache's own overhead, not a network.

`prepare`: `began-dist prepare` images/s of a PNG folder (decode, crop, resize, write) in
one process and as Ray tasks with `--workers` 1 and 2 on a local Ray cluster (started,
and two workers warmed up, outside the timing).

`testbed` (opt-in; needs cluster/testbed: root, and the machine's testbed free; see
benchmarks/data_testbed.py): on host1 with its link capped at 1 Gbit/s and 100 Mbit/s
(`cluster/testbed limit`), read throughput (images/s, MB/s against the link, against what a
12 ms step at batch 64 needs) and steps/s of a small BEGAN with prefetch, from `s3://`
shards through the node cache cold and warm, local shards and an in-RAM tensor; and
`prepare` images/s in one process against Ray tasks on one and two hosts at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from typing import Optional

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from began_dist import families  # noqa: E402,F401  (registers the families' config rules)
from began_dist.config import load_config  # noqa: E402
from began_dist.data import format as fmt  # noqa: E402
from began_dist.data import prepare as prep  # noqa: E402
from began_dist.data import reader, sources  # noqa: E402
from began_dist.data.dataset import InMemoryDataset, to_model_range  # noqa: E402
from began_dist.data.prefetch import Prefetcher  # noqa: E402
from began_dist.data.reader import ShardedDataset  # noqa: E402
from began_dist.data.sampler import FeistelPermutation, GlobalBatchSampler, LatentSource  # noqa: E402

CPU = torch.device("cpu")


def synthetic_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth colour blobs plus a little noise: compress like photos, unlike pure noise."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
        images[i] = np.clip(np.asarray(coarse, np.int16) + rng.integers(-8, 8, (size, size, 3)), 0, 255)
    return images


def write_folder(images: np.ndarray, root: str, suffix: str) -> list[str]:
    os.makedirs(root, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(os.path.join(root, f"{i:06d}{suffix}"))
        Image.fromarray(image).save(paths[-1], quality=90) if suffix == ".jpg" else Image.fromarray(image).save(
            paths[-1]
        )
    return paths


class FolderDataset:
    """Decodes (and crops, resizes) each image file when asked, as a torchvision ImageFolder would."""

    def __init__(self, paths: list[str], size: int, crop: str = "center"):
        self.paths, self.size, self.crop = paths, size, crop

    def __len__(self) -> int:
        return len(self.paths)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        images = np.stack([sources.load_image(self.paths[i], self.size, 3, self.crop) for i in indices.tolist()])
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


class NumpyDataset:
    """The ceiling: all images in one in-RAM numpy array (N, H, W, C); the shard reader's exact
    output path (a gather, then channels first) without any file or block lookup."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.images[indices.numpy()]).permute(0, 3, 1, 2).contiguous()


class EndlessBatches:
    """The sampler's global batches, forever (a DataLoader batch_sampler)."""

    def __init__(self, count: int, batch: int):
        self.sampler = GlobalBatchSampler(count, batch, seed=1)

    def __iter__(self):
        while True:
            yield self.sampler.next_indices().tolist()


def in_process(dataset, batch: int):
    """A reader: one random global batch -> float32 [-1, 1]; returns the number of images read."""
    batches = iter(EndlessBatches(len(dataset), batch))
    return lambda: len(to_model_range(dataset.batch(torch.tensor(next(batches))), CPU))


def through_dataloader(dataset, batch: int, workers: int):
    """The same through a DataLoader with worker processes (batched fetch via __getitems__)."""
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=EndlessBatches(len(dataset), batch),
                                         num_workers=workers, collate_fn=lambda x: x, prefetch_factor=4)
    batches = iter(loader)
    return lambda: len(to_model_range(next(batches), CPU))


def measure(readers: dict, seconds: float, rounds: int = 3) -> dict[str, tuple[float, float]]:
    """(images per wall second, images per CPU second of this process) per reader.

    Each is the best of `rounds` windows taken round-robin over the readers, so load from other
    jobs on a shared CPU falls on every row alike. The CPU-second figure is what one process on a
    core of its own delivers (for DataLoader rows the work is in the workers, so only wall time counts).
    """
    best = {name: (0.0, 0.0) for name in readers}
    for read in readers.values():
        read()  # open files, start workers, warm caches
    for _ in range(rounds):
        for name, read in readers.items():
            done, wall, cpu = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - wall < seconds / rounds:
                done += read()
            wall, cpu = time.perf_counter() - wall, max(time.process_time() - cpu, 1e-9)
            best[name] = (max(best[name][0], done / wall), max(best[name][1], done / cpu))
    return best


def step_rate(size: int, batch: int, steps: int) -> float:
    """Images/s one BEGAN training step consumes at this size (default model, this CPU)."""
    from began_dist.families import get_family

    cfg = load_config(None, [f"model.image_size={size}", "model.channels=3", f"train.batch_size={batch}",
                             "train.device=cpu"])
    family = get_family(cfg.model.family)(cfg, CPU)
    latents = LatentSource(0, family.latent_size, batch)
    real = torch.rand(batch, 3, size, size) * 2 - 1
    family.train_step(real, latents.next(family.latents_per_step, CPU))  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        family.train_step(real, latents.next(family.latents_per_step, CPU))
    return steps * batch / (time.perf_counter() - started)


ROWS = ("read", "shuffle", "prefetch", "startup", "remote", "prepare", "testbed")
DEFAULT_ROWS = "read,shuffle,prefetch,remote,prepare"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"tables to print, of {', '.join(ROWS)} "
                        f"(default {DEFAULT_ROWS}; startup is opt-in)")
    parser.add_argument("--size", type=int, default=64, help="image side, pixels")
    parser.add_argument("--images", type=int, default=2048, help="images in the prepared datasets")
    parser.add_argument("--folder-images", type=int, default=512, help="images in the PNG / JPEG folders")
    parser.add_argument("--batch", type=int, default=64, help="global batch per read")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per row (in 3 round-robin windows)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--step-batch", type=int, default=16, help="batch of the training step row")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps")
    parser.add_argument("--randperm-max", type=float, default=1e8, help="largest N the randperm rows materialise")
    parser.add_argument("--step-ms", type=float, default=12.0, help="simulated step of the prefetch rows (ms)")
    parser.add_argument("--startup-gb", type=float, default=1.5, help="dataset size of the startup rows (GB)")
    parser.add_argument("--tb-steps", type=int, default=20, help="timed BEGAN steps per source of the testbed rows")
    parser.add_argument("--tb-images", type=int, default=8192, help="images in the testbed rows' dataset (at 64 px, "
                        "8192 are 100 MB: 0.8 s at 1 Gbit/s, so fixed costs such as a listing stay small)")
    parser.add_argument("--prepare-images", type=int, default=1024, help="PNGs of the testbed's prepare rows")
    args = parser.parse_args()
    rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    if set(rows) - set(ROWS):
        parser.error(f"--rows: unknown {', '.join(sorted(set(rows) - set(ROWS)))}; rows are {', '.join(ROWS)}")
    torch.set_num_threads(1)  # one process = one core for the reader rows
    if "read" in rows or "prefetch" in rows:
        read_and_prefetch(args, rows)
    if "shuffle" in rows:
        print_shuffle(args)
    if "startup" in rows:
        print_startup(args)
    if "remote" in rows:
        print_remote(args)
    if "prepare" in rows:
        print_prepare(args)
    if "testbed" in rows:
        print_testbed(args)


def read_and_prefetch(args, rows: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        images = synthetic_images(args.images, args.size)
        png = write_folder(images[: args.folder_images], os.path.join(tmp, "png"), ".png")
        jpg = write_folder(images[: args.folder_images], os.path.join(tmp, "jpg"), ".jpg")
        celeba = write_folder(synthetic_images(args.folder_images, 218)[:, :, 20:198], os.path.join(tmp, "celeba"),
                              ".jpg")  # 178x218 like img_align_celeba
        source = os.path.join(tmp, "source")
        write_folder(images, source, ".png")
        shards = {}
        for fmt_name in ("arrow", "hdf5"):
            shards[fmt_name] = os.path.join(tmp, fmt_name)
            prep.prepare(source, shards[fmt_name], prep.PrepareOptions(format=fmt_name, size=args.size, shards=4,
                                                                       jobs=1))
        if "prefetch" in rows:
            print_prefetch(args, {"arrow shards": ShardedDataset(shards["arrow"]),
                                  "CelebA-like JPEG 178x218 + crop/resize": FolderDataset(celeba, args.size,
                                                                                          "carpedm20")})
        if "read" not in rows:
            return
        ram = InMemoryDataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
        readers = {
            "in-RAM numpy array (ceiling)": in_process(NumpyDataset(images), args.batch),
            "in-RAM torch tensor (built-in sources)": in_process(ram, args.batch),
        }
        for fmt_name in ("arrow", "hdf5"):
            readers[f"{fmt_name} shards, 1 process"] = in_process(ShardedDataset(shards[fmt_name]), args.batch)
            readers[f"{fmt_name} shards, DataLoader x{args.workers} workers"] = through_dataloader(
                ShardedDataset(shards[fmt_name]), args.batch, args.workers
            )
        readers["PNG folder, decoded per batch"] = in_process(FolderDataset(png, args.size), args.batch)
        readers["JPEG folder, decoded per batch"] = in_process(FolderDataset(jpg, args.size), args.batch)
        readers["CelebA-like JPEG 178x218 + crop/resize"] = in_process(
            FolderDataset(celeba, args.size, "carpedm20"), args.batch
        )
        measured = list(measure(readers, args.seconds).items())
        del readers  # stops the DataLoader workers
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    step = step_rate(args.size, args.step_batch, args.steps)
    print_table(measured, step, args)


# -- shuffle ------------------------------------------------------------------------------------
def batch_ns(sampler: GlobalBatchSampler, seconds: float = 1.0) -> float:
    """ns per index through the sampler's next_indices (what training asks for, batch after batch)."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += len(sampler.next_indices())
    return (time.perf_counter() - started) / done * 1e9


def bulk_ns(order, n: int) -> float:
    """ns per index for 2^20 random positions at once."""
    positions = np.random.default_rng(0).integers(0, n, 1 << 20)
    started = time.perf_counter()
    order(positions)
    return (time.perf_counter() - started) / len(positions) * 1e9


def print_shuffle(args) -> None:
    print(f"\nshuffle: one epoch's order at N images, global batch {args.batch}, 1 torch thread; "
          f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"| {'N':>13} | {'order':<9} | {'state held':>12} | {'peak, batch':>11} | {'ns/idx batch':>12} | "
          f"{'ns/idx bulk':>11} | {'epoch start':>11} |")
    print(f"|{'-' * 15}|{'-' * 11}|{'-' * 14}|{'-' * 13}|{'-' * 14}|{'-' * 13}|{'-' * 13}|")
    for n in (10**6, 10**8, 10**9):
        for order in ("feistel", "randperm"):
            sampler = GlobalBatchSampler(n, args.batch, seed=1)
            if order == "randperm":  # a run resumed from a checkpoint without the shuffle marker
                if n > args.randperm_max:
                    print(f"| {n:>13,} | {order:<9} | {8 * n / 1e9:>9,.1f} GB | {'-':>11} | {'-':>12} | {'-':>11} | "
                          f"{'not run':>11} |")
                    continue
                sampler.load_state_dict({"epoch": 0, "offset": 0, "seed": 1, "num_images": n})
            tracemalloc.start()  # numpy's allocations (the Feistel path); torch's randperm is not traced
            started = time.perf_counter()
            sampler.next_indices()  # the epoch's order (keys, or the whole randperm), then one batch
            first = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            held, per_batch = sampler.state_bytes, batch_ns(sampler)
            bulk = bulk_ns(FeistelPermutation(n, 1, 0) if order == "feistel" else sampler._perm.__getitem__, n)
            peak_text = f"{peak / 1e3:>8,.1f} kB" if order == "feistel" else f"{'-':>11}"
            print(f"| {n:>13,} | {order:<9} | {held / 1e6:>9,.3f} MB | {peak_text} | {per_batch:>12,.0f} | "
                  f"{bulk:>11,.0f} | {first * 1e3:>8,.1f} ms |")
            del sampler
    print("goal: shuffle state <= 1 MB per worker at any N (feistel: round keys + this rank's next indices; "
          "randperm: 8 bytes x N)")


# -- prefetch -----------------------------------------------------------------------------------
def print_prefetch(args, datasets: dict) -> None:
    step_s, steps = args.step_ms / 1e3, max(8, int(args.seconds / (args.step_ms / 1e3)))
    print(f"\nprefetch: a loop of {steps} steps of {args.step_ms:g} ms (sleep: the host waiting on the device), "
          f"batch {args.batch}, {args.size} px; load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"| {'source':<40} | {'prefetch':>8} | {'steps/s':>8} | {'vs step alone':>13} | {'wait/step':>10} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 10}|{'-' * 15}|{'-' * 12}|")
    for name, dataset in datasets.items():
        for depth in (0, 2):
            with Prefetcher(dataset, GlobalBatchSampler(len(dataset), args.batch, seed=1), CPU, depth) as ahead:
                ahead.next()  # start the thread, open the files
                ahead.take_wait_s()
                started = time.perf_counter()
                for _ in range(steps):
                    ahead.next()
                    time.sleep(step_s)
                rate, wait = steps / (time.perf_counter() - started), ahead.take_wait_s() / steps
            label = f"depth {depth}" if depth else "off"
            print(f"| {name:<40} | {label:>8} | {rate:>8.1f} | {rate * step_s:>12.0%} | {wait * 1e3:>7.2f} ms |")
    print(f"a step of {args.step_ms:g} ms at batch {args.batch} needs {args.batch / step_s:,.0f} images/s "
          f"({args.batch * args.size * args.size * 3 / step_s / 1e6:,.0f} MB/s of {args.size} px RGB)")


# -- startup ------------------------------------------------------------------------------------
def write_big_dataset(out: str, gigabytes: float, size: int) -> int:
    """Arrow shards of ~256 MB of random images (hashing cost does not depend on content)."""
    os.makedirs(out)
    image_bytes, per_shard = size * size * 3, (256 << 20) // (size * size * 3)
    total = int(gigabytes * 1e9) // image_bytes
    rng, entries, index = np.random.default_rng(0), [], 0
    while index * per_shard < total:
        count = min(per_shard, total - index * per_shard)
        images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
        entries.append(fmt.write_shard(os.path.join(out, fmt.shard_name(index, "arrow")), "arrow", images, {}))
        index += 1
    fmt.write_manifest(out, {"format_version": fmt.FORMAT_VERSION, "format": "arrow", "height": size, "width": size,
                             "channels": 3, "dtype": "uint8", "labels": {}, "count": total, "shards": entries})
    return total


def print_startup(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out, cache = os.path.join(tmp, "big"), os.path.join(tmp, "cache")
        count = write_big_dataset(out, args.startup_gb, args.size)
        size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
        print(f"\nstartup: {count:,} images, {size / 1e9:.2f} GB in {len(os.listdir(out)) - 1} Arrow shards "
              f"(in the page cache: hashing, not the disk, is timed); load {os.getloadavg()[0]:.2f}")
        print(f"| {'verified-shard record':<28} | {'to first batch':>14} | {'hashed':>9} |")
        print(f"|{'-' * 30}|{'-' * 16}|{'-' * 11}|")
        for label in ("empty (first start)", "present (later starts)"):
            hashed, started = reader.HASHED["bytes"], time.perf_counter()
            dataset = ShardedDataset(out, cache_dir=cache)
            sampler = GlobalBatchSampler(len(dataset), args.batch, seed=1)
            to_model_range(dataset.batch(sampler.next_indices()), CPU)
            seconds, hashed = time.perf_counter() - started, reader.HASHED["bytes"] - hashed
            print(f"| {label:<28} | {seconds:>12.2f} s | {hashed / 1e9:>6.2f} GB |")
    print("goal: time to the first step independent of the dataset's size once verified")


# -- remote -------------------------------------------------------------------------------------
AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_EC2_METADATA_DISABLED": "true"}


class S3Server:
    """moto's S3 server in its own process on 127.0.0.1 (so it does not share this process's GIL)."""

    def __enter__(self) -> str:
        import pyarrow.fs as pafs

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.environ.update(AWS)
        fs = pafs.S3FileSystem(region="us-east-1", scheme="http", endpoint_override=f"127.0.0.1:{port}",
                               allow_bucket_creation=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                fs.create_dir("bench")
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.2)
        return f"region=us-east-1&scheme=http&endpoint_override=127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def read_epoch(dataset, batch: int, first: Optional[list] = None) -> float:
    """Seconds to read one epoch of random global batches -> float32 [-1, 1] (`first` gets the first batch's)."""
    sampler, started = GlobalBatchSampler(len(dataset), batch, seed=1), time.perf_counter()
    for step in range(len(dataset) // batch):
        to_model_range(dataset.batch(sampler.next_indices()), CPU)
        if step == 0 and first is not None:
            first.append(time.perf_counter() - started)
    return time.perf_counter() - started


@contextlib.contextmanager
def cache_reads(block: int):
    """The node cache's read size set to `block` (0: the default) meanwhile: the "before" rows read as the
    cache did before data.fetch_workers (4 MB)."""
    from began_dist.data import cache

    default = cache.BLOCK
    cache.BLOCK = block or default
    try:
        yield
    finally:
        cache.BLOCK = default


def remote_epoch(path: str, workers: int, block: int, node: str, batch: int, cold: bool) -> tuple:
    """(open s, first batch s, epoch s, bytes fetched) of one epoch through the node cache at `node`."""
    from began_dist.data import cache

    if cold:
        shutil.rmtree(node, ignore_errors=True)
    fetched, started, first = cache.FETCHED["bytes"], time.perf_counter(), []
    with cache_reads(block):
        dataset = ShardedDataset(path, cache_dir=node, fetch_workers=workers)  # the manifest and a listing
        opened = time.perf_counter() - started
        seconds = read_epoch(dataset, batch, first)  # cold: every shard fetched on first need, in here
    dataset.close()
    return opened, first[0], seconds, cache.FETCHED["bytes"] - fetched


def print_remote(args) -> None:
    from began_dist.data import cache

    with tempfile.TemporaryDirectory() as tmp, S3Server() as query:
        source = os.path.join(tmp, "source")
        write_folder(synthetic_images(args.images, args.size), source, ".png")
        print(f"\nremote: {args.images} images, {args.size} px RGB, 8 shards; s3:// on moto at 127.0.0.1 (no link "
              f"cap), one epoch of random batches of {args.batch}; load {os.getloadavg()[0]:.2f}")
        print(f"| {'shards (best of 3)':<45} | {'open':>7} | {'1st batch':>9} | {'img/s':>8} | {'MB/s':>7} | "
              f"{'fetched':>8} |")
        print(f"|{'-' * 47}|{'-' * 9}|{'-' * 11}|{'-' * 10}|{'-' * 9}|{'-' * 10}|")
        for fmt_name in ("arrow", "hdf5"):
            local = os.path.join(tmp, fmt_name)
            options = prep.PrepareOptions(format=fmt_name, size=args.size, shards=8, jobs=1)
            prep.prepare(source, local, options)
            uri = f"s3://bench/{fmt_name}?{query}"
            prep.prepare(source, uri, options)
            size = sum(entry["bytes"] for entry in ShardedDataset(local).manifest["shards"])
            node = os.path.join(tmp, f"cache-{fmt_name}")
            settings = {"local disk": (local, cache.DEFAULT_WORKERS, cache.BLOCK),
                        "s3:// cold, before (1 at a time, 4 MB)": (uri, 1, 1 << 22),
                        "s3:// cold cache": (uri, cache.DEFAULT_WORKERS, cache.BLOCK),
                        "s3:// warm cache": (uri, cache.DEFAULT_WORKERS, cache.BLOCK)}
            best: dict[str, tuple] = {}
            for _ in range(3):  # alternated, best of 3: the load of other jobs falls on every row
                for label, setting in settings.items():
                    result = remote_epoch(*setting, node, args.batch, cold="cold" in label)
                    if label not in best or result[2] < best[label][2]:
                        best[label] = result
            for label, (opened, first, seconds, fetched) in best.items():
                print(f"| {fmt_name + ', ' + label:<45} | {opened:>5.2f} s | {first:>7.2f} s | "
                      f"{args.images / seconds:>8,.0f} | {size / seconds / 1e6:>7,.1f} | {fetched / 1e6:>5,.1f} MB |")
    print("goal (testbed, capped link): cold-cache read >= 80% of the link's rate; warm cache as fast as local disk")


# -- testbed ------------------------------------------------------------------------------------
def print_testbed(args) -> None:
    from data_testbed import print_testbed as on_the_testbed

    on_the_testbed(args)


# -- prepare ------------------------------------------------------------------------------------
def print_prepare(args) -> None:
    import ray

    from began_dist.distributed.ray_prepare import ray_runner

    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "source")
        write_folder(synthetic_images(args.images, 2 * args.size), source, ".png")
        print(f"\nprepare: {args.images} PNG images at {2 * args.size} px -> {args.size} px Arrow, 8 shards; "
              f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (a local Ray cluster, started untimed)")
        print(f"| {'writer':<28} | {'img/s':>8} | {'vs 1 process':>12} |")
        print(f"|{'-' * 30}|{'-' * 10}|{'-' * 14}|")
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False)
        try:
            warm = prep.PrepareOptions(size=args.size, shards=2, jobs=1, limit=4)  # start and import in 2 workers
            prep.prepare(source, os.path.join(tmp, "warm-up"), warm, ray_runner(2))
            base = None
            for label, runner in (("1 process", None), ("Ray, --workers 1", ray_runner(1)),
                                  ("Ray, --workers 2", ray_runner(2))):
                out = os.path.join(tmp, label.replace(" ", "").replace(",", ""))
                started = time.perf_counter()
                prep.prepare(source, out, prep.PrepareOptions(size=args.size, shards=8, jobs=1), runner)
                rate = args.images / (time.perf_counter() - started)
                base = base or rate
                print(f"| {label:<28} | {rate:>8,.0f} | {rate / base:>11.2f}x |")
        finally:
            ray.shutdown()


def print_table(rows: list[tuple[str, tuple[float, float]]], step: float, args) -> None:
    rates = dict(rows)
    ceiling, folder = rates["in-RAM numpy array (ceiling)"][1], rates["PNG folder, decoded per batch"][1]
    print(f"\ndata_speed: {args.size} px RGB, batch {args.batch}, {args.images} images, float32 [-1, 1] on CPU, "
          f"1 torch thread; load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"| {'source':<40} | {'img/s wall':>10} | {'img/CPU-s':>10} | {'vs in-RAM':>9} | {'vs PNG folder':>13} |")
    print(f"|{'-' * 42}|{'-' * 12}|{'-' * 12}|{'-' * 11}|{'-' * 15}|")
    for name, (wall, cpu) in rows:
        if "DataLoader" in name:  # its work is in the worker processes: only the wall figure means anything
            print(f"| {name:<40} | {wall:>10,.0f} | {'-':>10} | {'-':>9} | {'-':>13} |")
        else:
            print(f"| {name:<40} | {wall:>10,.0f} | {cpu:>10,.0f} | {cpu / ceiling:>8.0%} | {cpu / folder:>12.1f}x |")
    name = f"BEGAN train step ({args.size} px, batch {args.step_batch})"
    print(f"| {name:<40} | {step:>10,.1f} | {'-':>10} | {'-':>9} | {'-':>13} |")
    arrow, celeba = rates["arrow shards, 1 process"][1], rates["CelebA-like JPEG 178x218 + crop/resize"][1]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print(f"goals (arrow, 1 process, per CPU-second): >= 5,000 img/s: {verdict(arrow >= 5000)} ({arrow:,.0f}); "
          f">= 20x image folder: CelebA-like {verdict(arrow >= 20 * celeba)} ({arrow / celeba:.0f}x), "
          f"64 px PNG decode-only {verdict(arrow >= 20 * folder)} ({arrow / folder:.1f}x); "
          f">= 50% of in-RAM: {verdict(arrow >= 0.5 * ceiling)} ({arrow / ceiling:.0%})")


if __name__ == "__main__":
    main()
