"""`began-dist prepare`: turn a source into a dataset directory (manifest + shards).

A source becomes a list of small item descriptions (paths, code points, shape
parameters, row ranges...) and a loader that turns a slice of them into images
and labels. Each shard is one slice, written by a worker process (`--jobs`), to a
temp name and renamed when complete; `manifest.json` is written last, so a crash
never leaves a manifest that points at a partial shard.

    began-dist prepare data/img_align_celeba data/celeba64 --format arrow --size 64 --shards 16
    began-dist prepare cifar-10-python.tar.gz data/cifar32 --format hdf5 --size 32 --shards 4
    began-dist prepare glyphs data/glyphs64 --format arrow --size 64 --shards 8 --fonts A.ttc:2,B.ttf
    began-dist prepare shapes data/crs --format arrow --size 64 --shards 4   (-> data/crs/{train,heldout})
    began-dist prepare shapes4 data/four --size 64 --limit 12000     (the harder set: 4 shapes, random places)
    began-dist prepare --verify data/celeba64
"""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from typing import Any, Optional

import numpy as np
import pyarrow.fs as pafs
from tqdm import tqdm

from began_dist import uris
from began_dist.data import format as fmt
from began_dist.data import sources
from began_dist.data.dataset import DataError
from began_dist.data.plans import (
    GRAY_KINDS,
    KINDS,
    SHAPES_SPLITS,
    Plan,
    PrepareOptions,
    infer_kind,
    load_four_shapes,
    load_shapes,
    plan_source,
)
from began_dist.data.reader import open_filesystem

PARALLEL_MIN_ITEMS = 4096  # --jobs 0: below this many items, one process is faster than spawning workers


# -- writing ---------------------------------------------------------------------------------
def _slice(items, start: int, stop: int):
    return tuple(part[start:stop] for part in items) if isinstance(items, tuple) else items[start:stop]


def _count(items) -> int:
    return len(items[0]) if isinstance(items, tuple) else len(items)


def write_one(task: tuple) -> tuple[dict, dict]:
    """Worker (a process or a Ray task, on any host): render one shard's items and write the shard.

    Its bytes depend only on the task, never on the process or host that writes it, so a
    dataset prepared by many workers has the sha256s of one prepared by one process. A local
    OUT gets a temp name, then a rename; an object store gets the finished file in one
    upload (an object is visible only once complete).
    """
    loader, items, kwargs, out, name, format_name, channels = task
    images, labels, skipped = loader(items, **kwargs)
    images = np.ascontiguousarray(sources.to_channels(images, channels))
    fs, base = open_out(out)
    if isinstance(fs, pafs.LocalFileSystem):
        return fmt.write_shard(os.path.join(base, name), format_name, images, labels), skipped
    with tempfile.TemporaryDirectory(prefix="began-prepare-") as tmp:
        entry = fmt.write_shard(os.path.join(tmp, name), format_name, images, labels)
        pafs.copy_files(os.path.join(tmp, name), f"{base}/{name}", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
    return entry, skipped


def _merge_skipped(parts: list[dict]) -> dict:
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            else:
                for sub, count in value.items():
                    merged.setdefault(key, {})[sub] = merged.get(key, {}).get(sub, 0) + count
    return merged


def open_out(out: str) -> tuple[pafs.FileSystem, str]:
    """OUT's filesystem and path in it: a local directory, or a file://, s3:// or gs:// URI."""
    return open_filesystem(out, "prepare OUT")


def _clear_shards(out: str) -> None:
    fs, base = open_out(out)
    for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        if info.base_name.startswith("shard-") and info.type == pafs.FileType.File:
            fs.delete_file(info.path)


def write_dataset(plan: Plan, out_dir: str, options: PrepareOptions, source: str,
                  runner: Optional[Callable] = None) -> dict:
    """Write the plan's shards (in parallel with --jobs, or by `runner`), then the manifest; returns it.

    `runner(tasks, total, label)` runs `write_one` over the tasks elsewhere (Ray tasks: `prepare
    --workers`) and returns their results in task order.
    """
    fs, base = open_out(out_dir)
    if fs.get_file_info(f"{base}/{fmt.MANIFEST}").type != pafs.FileType.NotFound:
        raise DataError(f"prepare: {out_dir} already holds a dataset (manifest.json); choose another OUT")
    total = _count(plan.items)
    if options.shards < 1 or options.shards > total:
        raise DataError(f"--shards {options.shards}: must be in 1..{total} (the number of items)")
    fs.create_dir(base)
    _clear_shards(out_dir)  # leftovers of a crashed run: no manifest names them
    channels = options.channels or (1 if plan.kind in GRAY_KINDS else 3)
    bounds = np.linspace(0, total, options.shards + 1).round().astype(int)
    tasks = [
        (plan.loader, _slice(plan.items, bounds[i], bounds[i + 1]), plan.kwargs, out_dir,
         fmt.shard_name(i, options.format), options.format, channels)
        for i in range(options.shards)
    ]
    label = f"prepare {base.rstrip('/').rsplit('/', 1)[-1]}"
    try:
        if runner is not None:
            results = runner(tasks, total, label)
        else:
            results = _run_tasks(tasks, options.jobs or _auto_jobs(options.shards, total), total, label)
        skipped = _merge_skipped([s for _, s in results])
        bad = skipped.get("bad_reasons", [])
        if bad and not options.skip_bad:
            listing = "\n  ".join(bad[:50]) + ("\n  ..." if len(bad) > 50 else "")
            raise DataError(f"prepare: {len(bad)} unreadable image file(s) (use --skip-bad to skip them):\n  {listing}")
    except BaseException:
        _clear_shards(out_dir)
        raise
    manifest = _manifest(plan, options, source, channels, [entry for entry, _ in results], skipped)
    if manifest["count"] == 0:
        _clear_shards(out_dir)
        raise DataError(f"prepare: {source}: no images left to write")
    _write_manifest(fs, base, manifest)
    return manifest


def _write_manifest(fs: pafs.FileSystem, base: str, manifest: dict) -> None:
    """The dataset's commit point, after every shard: atomic locally (fmt.write_manifest), one put on a store."""
    if isinstance(fs, pafs.LocalFileSystem):
        fmt.write_manifest(base, manifest)
        return
    with fs.open_output_stream(f"{base}/{fmt.MANIFEST}") as stream:
        stream.write(json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8"))


def _auto_jobs(shards: int, items: int) -> int:
    """Worker processes only when there is enough work to pay for starting them (a few seconds each)."""
    return min(shards, os.cpu_count() or 1) if items >= PARALLEL_MIN_ITEMS else 1


def _run_tasks(tasks: list[tuple], jobs: int, total: int, label: str) -> list[tuple[dict, dict]]:
    progress = tqdm(total=total, desc=label, unit="img")
    try:
        if jobs <= 1:
            results = []
            for task in tasks:
                results.append(write_one(task))
                progress.update(_count(task[1]))
            return results
        # spawn, not fork: the parent may hold pyarrow/torch threads, which fork does not copy safely
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(write_one, task) for task in tasks]
            for future, task in zip(futures, tasks):
                future.result()
                progress.update(_count(task[1]))
            return [future.result() for future in futures]
    finally:
        progress.close()


def _manifest(plan: Plan, options: PrepareOptions, source: str, channels: int, shards: list[dict],
              skipped: dict) -> dict:
    labels, shapes = _label_schema(plan)
    return {
        "format_version": fmt.FORMAT_VERSION,
        "format": options.format,
        "height": options.size,
        "width": options.size,
        "channels": channels,
        "dtype": "uint8",
        "labels": labels,
        "label_shapes": shapes,
        "count": sum(shard["count"] for shard in shards),
        "shards": shards,
        "source": {"kind": plan.kind, "path": source if source in KINDS else os.path.abspath(source)},
        "options": {key: value for key, value in asdict(options).items() if key not in ("jobs",)},
        "skipped": {"bad_files": skipped.get("bad_files", []), "count": len(skipped.get("bad_files", [])),
                    "reasons": skipped.get("bad_reasons", []),
                    **({"missing_glyphs": skipped["missing_glyphs"]} if "missing_glyphs" in skipped else {})},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **plan.info,
    }


def _label_schema(plan: Plan) -> tuple[dict, dict]:
    """Label dtypes and shapes, from a one-item dry run of the loader (also valid when every shard is empty)."""
    _, labels, _ = plan.loader(_slice(plan.items, 0, 1), **plan.kwargs)
    return fmt.label_dtypes(labels), fmt.label_shapes(labels)


# -- the command -----------------------------------------------------------------------------
def prepare(source: str, out_dir: str, options: PrepareOptions, runner: Optional[Callable] = None) -> list[str]:
    """Prepare SOURCE into OUT (for shapes: OUT/train and OUT/heldout); returns the dataset directories.

    OUT is a local directory or a file://, s3:// or gs:// URI; `runner`: see write_dataset.
    """
    _check_options(options)
    open_out(out_dir)  # refuses another scheme, or a URI pyarrow cannot open, before any work
    kind = options.kind or infer_kind(source)
    if kind not in KINDS:
        raise DataError(f"--kind {kind!r}: must be one of {', '.join(KINDS)}")
    if kind == "shapes":
        written = []
        for split, kinds in SHAPES_SPLITS.items():
            grid = sources.crs_grid(kinds, options.limit)
            plan = Plan(kind, load_shapes, grid, {"size": options.size}, {"shapes": kinds, "split": split})
            written.append(_write(plan, uris.join(out_dir, split), options, source, runner))
        return written
    if kind == "shapes4":
        written = []
        for split, contents in sources.FOUR_SPLITS.items():
            items = sources.four_variants(split, options.limit or sources.FOUR_COUNT)
            info = {"shapes": list(sources.FOUR_SHAPES), "split": split, "contents": contents}
            plan = Plan(kind, load_four_shapes, items, {"size": options.size}, info)
            written.append(_write(plan, uris.join(out_dir, split), options, source, runner))
        return written
    plan = plan_source(source, options, kind)
    if options.limit:
        plan.items = _slice(plan.items, 0, options.limit)
    return [_write(plan, out_dir, options, source, runner)]


def _write(plan: Plan, out_dir: str, options: PrepareOptions, source: str, runner: Optional[Callable]) -> str:
    manifest = write_dataset(plan, out_dir, options, source, runner)
    skipped = manifest["skipped"]
    note = f", skipped {skipped['count']} unreadable" if skipped["count"] else ""
    if "missing_glyphs" in skipped:
        note += f", glyphs missing per font {skipped['missing_glyphs']}"
    print(f"{out_dir}: {manifest['count']} images in {len(manifest['shards'])} {options.format} shards{note}")
    return out_dir


def _check_options(options: PrepareOptions) -> None:
    if options.format not in fmt.FORMATS:
        raise DataError(f"--format {options.format!r}: must be arrow or hdf5")
    if not 1 <= options.size <= 4096:
        raise DataError(f"--size {options.size}: must be a positive number of pixels")
    if options.channels not in (0, 1, 3):
        raise DataError(f"--channels {options.channels}: must be 1 or 3")
    if options.jobs < 0 or options.limit < 0 or options.source_size < 0:
        raise DataError("--jobs, --limit and --source-size must be >= 0")
    if options.max_pixels < 1:
        raise DataError(f"--max-pixels {options.max_pixels}: must be a positive number of pixels")


def verify(dataset_dir: str, out: Optional[Callable[[str], None]] = print) -> bool:
    """`prepare --verify`: recompute every shard's checksum and check its schema; print a table."""
    from began_dist.data.reader import verify_shards

    rows = verify_shards(dataset_dir)
    width = max([len(row["file"]) for row in rows] + [5])
    out(f"{'shard':<{width}}  {'images':>8}  {'bytes':>12}  {'sha256':<16}  status")
    for row in rows:
        out(f"{row['file']:<{width}}  {row['count']:>8}  {row['bytes']:>12}  {row['sha256'][:16]:<16}  {row['status']}")
    bad = [row for row in rows if row["status"] != "ok"]
    out(f"{dataset_dir}: {len(rows) - len(bad)} of {len(rows)} shards ok")
    return not bad
