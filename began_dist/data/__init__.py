"""Data: built-in sources, the dataset interface, and the resumable global-batch sampler."""

from __future__ import annotations

import copy

import torch

from began_dist.data import sources
from began_dist.data.dataset import DataError, ImageDataset, InMemoryDataset

__all__ = ["DataError", "ImageDataset", "build_dataset", "check_source", "load_examples"]


def check_source(cfg) -> None:
    """Cheap checks of the data config, before a run directory exists (DataError, exit 2)."""
    d = cfg.data
    if d.source == "folder":
        sources.list_images(d.path)
    elif d.source == "glyphs":
        sources.load_font(d.font or sources.default_font(), d.font_index, 16)
    elif d.source == "shapes":
        sources.crs_shapes(16, _shape_kinds(d), limit=1)
    elif d.source == "shards":
        raise DataError("data.source=shards: the sharded reader is not built yet; use glyphs, shapes or folder")
    if cfg.model.channels != 1 and d.source in ("glyphs", "shapes"):
        raise DataError(f"model.channels={cfg.model.channels}: data.source={d.source} is grayscale; use 1")


def _shape_kinds(d) -> list[str]:
    return [kind.strip() for kind in d.shapes.split(",") if kind.strip()]


def build_dataset(cfg) -> ImageDataset:
    """The dataset named by `cfg.data`, at `cfg.model.image_size` and `cfg.model.channels`."""
    d, size = cfg.data, cfg.model.image_size
    check_source(cfg)
    if d.source == "glyphs":
        images, _ = sources.render_glyphs(size, d.glyphs, d.font, d.font_index)
        labels = None
    elif d.source == "shapes":
        images, labels = sources.crs_shapes(size, _shape_kinds(d), limit=d.limit)
    else:
        images, labels = sources.image_folder(d.path, size, cfg.model.channels, limit=d.limit)
    images, labels = images[: d.limit or None], None if labels is None else labels[: d.limit or None]
    if len(images) < cfg.train.batch_size:
        raise DataError(
            f"data.source={d.source}: {len(images)} images, fewer than train.batch_size={cfg.train.batch_size}"
        )
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return InMemoryDataset(tensor, None if labels is None else torch.from_numpy(labels), name=d.source)


def load_examples(cfg, count: int) -> torch.Tensor:
    """The first `count` images of the run's data source, uint8 (count, C, H, W)."""
    small = copy.deepcopy(cfg)
    small.data.limit, small.data.glyphs, small.train.batch_size = count, min(cfg.data.glyphs, count), 1
    return build_dataset(small).batch(torch.arange(count))
