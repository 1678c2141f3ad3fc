"""Data: built-in sources, the dataset interface, and the resumable global-batch sampler."""

from __future__ import annotations

import copy

import torch

from began_dist.data import cache, sources
from began_dist.data.dataset import DataError, ImageDataset, InMemoryDataset
from began_dist.data.reader import ShardedDataset

__all__ = ["DataError", "ImageDataset", "ShardedDataset", "build_dataset", "check_source", "load_examples"]


def check_source(cfg) -> None:
    """Cheap checks of the data config, before a run directory exists (DataError, exit 2)."""
    d = cfg.data
    if d.source == "folder":
        sources.list_images(d.path)
    elif d.source == "glyphs":
        sources.load_font(d.font or sources.default_font(), d.font_index, 16)
    elif d.source == "shapes":
        labels = shape_images(d, 16, limit=1)[1]
        _check_labels(cfg, None if labels is None else (labels.shape[1] if labels.ndim == 2 else 1))
    elif d.source == "shards":
        dataset = sharded(d)  # remote: the manifest and one listing; the data stays where it is
        _check_shards(cfg, dataset)
        _check_labels(cfg, dataset.label_width)
    if cfg.model.channels != 1 and d.source in ("glyphs", "shapes"):
        raise DataError(f"model.channels={cfg.model.channels}: data.source={d.source} is grayscale; use 1")


def cache_dir(d):
    """data.cache_dir where the config has it (None: began_dist.data.verified.default_cache_dir)."""
    return getattr(d, "cache_dir", None) or None


def sharded(d) -> ShardedDataset:
    """data.path's dataset with the node cache settings (data.cache_dir, cache_gb, fetch_ahead, fetch_workers)."""
    return ShardedDataset(d.path, limit=d.limit, cache_dir=cache_dir(d),
                          cache_gb=float(getattr(d, "cache_gb", None) or cache.DEFAULT_GB),
                          prefetch=int(getattr(d, "fetch_ahead", cache.DEFAULT_PREFETCH)),
                          fetch_workers=int(getattr(d, "fetch_workers", cache.DEFAULT_WORKERS)))


def _check_shards(cfg, dataset: ShardedDataset) -> None:
    """The prepared images must be the model's size and channels (prepare again at another --size)."""
    m = cfg.model
    if (dataset.image_size, dataset.channels) != (m.image_size, m.channels):
        raise DataError(
            f"data.path={cfg.data.path}: images are {dataset.image_size} px x {dataset.channels} channels, the model "
            f"wants model.image_size={m.image_size}, model.channels={m.channels}"
        )


def _check_labels(cfg, width) -> None:
    """model.family=multigen: one component label per generator (y in {0, 1}^K); `width`: labels per image."""
    if cfg.model.family != "multigen":
        return
    z_sizes = list(cfg.model.multigen.z_sizes)
    if width != len(z_sizes):
        found = "none" if width is None else f"{width} per image"
        raise DataError(f"model.multigen.z_sizes={z_sizes}: one generator per component label; the data has {found}")


def shape_images(d, size: int, limit: int = 0):
    """data.shapes: CRS kinds (images, labels y = [cross, square]) or `four` (the harder set's training split)."""
    if d.shapes.strip() == "four":
        images, labels, _ = sources.four_render(sources.four_variants("train", limit or sources.FOUR_COUNT), size)
        return images, labels
    return sources.crs_shapes(size, [kind.strip() for kind in d.shapes.split(",") if kind.strip()], limit=limit)


def build_dataset(cfg) -> ImageDataset:
    """The dataset named by `cfg.data`, at `cfg.model.image_size` and `cfg.model.channels`."""
    d, size = cfg.data, cfg.model.image_size
    if d.source == "shards":
        dataset = sharded(d)  # checksums once per shard version; remote shards on first use, in the node cache
        _check_shards(cfg, dataset)
        _check_size(d, len(dataset), cfg.train.batch_size)
        return dataset
    check_source(cfg)
    if d.source == "glyphs":
        images, _ = sources.render_glyphs(size, d.glyphs, d.font, d.font_index)
        labels = None
    elif d.source == "shapes":
        images, labels = shape_images(d, size, d.limit)
    else:
        images, labels = sources.image_folder(d.path, size, cfg.model.channels, limit=d.limit)
    images, labels = images[: d.limit or None], None if labels is None else labels[: d.limit or None]
    _check_size(d, len(images), cfg.train.batch_size)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return InMemoryDataset(tensor, None if labels is None else torch.from_numpy(labels), name=d.source)


def _check_size(d, count: int, batch_size: int) -> None:
    if count < batch_size:
        raise DataError(f"data.source={d.source}: {count} images, fewer than train.batch_size={batch_size}")


def load_examples(cfg, count: int) -> torch.Tensor:
    """The first `count` images of the run's data source, uint8 (count, C, H, W)."""
    small = copy.deepcopy(cfg)
    small.data.limit, small.data.glyphs, small.train.batch_size = count, min(cfg.data.glyphs, count), 1
    return build_dataset(small).batch(torch.arange(count))
