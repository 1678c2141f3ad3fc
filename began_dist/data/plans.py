"""What `began-dist prepare` writes, per source kind: the options, the kind inferred from SOURCE,
and one plan per kind (the items a source becomes and the loader that renders a slice of them).
prepare.py splits a plan into shards and writes them."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from began_dist.data import sources
from began_dist.data.dataset import DataError

KINDS = ("folder", "celeba", "cifar10", "hdf5-flat", "glyphs", "cns", "fashion-mnist", "shapes", "shapes4")
GRAY_KINDS = ("glyphs", "cns", "fashion-mnist", "shapes", "shapes4")  # sources that are one-channel by nature
SHAPES_SPLITS = {"train": ["square+cross", "square"], "heldout": ["cross"]}  # docs/multigen.md: cross alone is held out


@dataclass
class PrepareOptions:
    format: str = "arrow"  # arrow | hdf5
    size: int = 64  # output height = width, pixels
    shards: int = 1  # shard files (per dataset directory)
    kind: str = ""  # source kind (KINDS); empty = inferred from SOURCE
    crop: str = ""  # folder/celeba crop preset (sources.CROPS); empty = center (celeba: carpedm20)
    channels: int = 0  # 1 or 3; 0 = the source's own (1 for glyph/shape/IDX sources, else 3)
    fonts: str = ""  # glyphs: PATH[:FACE],... ; empty = the bundled Noto Sans CJK SC
    charset: str = ""  # glyphs: RANGE | FILE | common (default)
    source_size: int = 0  # hdf5-flat: H of the flattened rows; 0 = inferred as a square RGB image
    skip_bad: bool = False  # skip unreadable files (counted in the manifest) instead of refusing
    max_pixels: int = sources.MAX_PIXELS  # image files declaring more pixels are unreadable (decompression bombs)
    jobs: int = 0  # worker processes writing shards; 0 = min(shards, CPUs) for large sources, else 1
    limit: int = 0  # keep only the first N items (0 = all); for shapes an evenly spread subset


@dataclass
class Plan:
    """What to write: items split into shards, the loader that renders them, and manifest facts."""

    kind: str
    loader: Callable  # loader(items, **kwargs) -> (images NHWC uint8, labels dict, skipped dict)
    items: Any  # a list, or a tuple of arrays sliced together
    kwargs: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # extra manifest keys (classes, fonts, ...)


# -- kind inference ------------------------------------------------------------------------
def infer_kind(source: str) -> str:
    """The source kind when it is obvious from SOURCE; DataError asking for --kind otherwise."""
    if source in ("glyphs", "shapes", "shapes4", "cns", "fashion-mnist", "cifar10"):
        return source
    lower = source.lower().rstrip("/")
    if lower.endswith((".tar.gz", ".tgz", ".tar")):
        return "cifar10"
    if lower.endswith((".h5", ".hdf5")):
        return "hdf5-flat"
    if os.path.isdir(source):
        if glob.glob(os.path.join(source, "*-idx3-ubyte*")):
            return "fashion-mnist"
        if os.path.isdir(os.path.join(source, "a1")) and "cns" in lower:
            return "cns"
        if os.path.basename(lower) == "img_align_celeba" or os.path.isdir(os.path.join(source, "img_align_celeba")):
            return "celeba"
        return "folder"
    if not os.path.exists(source):
        raise DataError(f"prepare: no such source {source!r}")
    raise DataError(f"prepare: cannot tell what {source!r} is; give --kind ({', '.join(KINDS)})")


# -- plans, one per kind -------------------------------------------------------------------
def plan_source(source: str, options: PrepareOptions, kind: str) -> Plan:
    planners = {
        "folder": _plan_folder,
        "celeba": _plan_folder,
        "cifar10": _plan_cifar10,
        "hdf5-flat": _plan_hdf5_flat,
        "glyphs": _plan_glyphs,
        "cns": _plan_cns,
        "fashion-mnist": _plan_fashion_mnist,
    }
    return planners[kind](source, options, kind)


def _plan_folder(source: str, options: PrepareOptions, kind: str) -> Plan:
    root = source
    if kind == "celeba" and os.path.isdir(os.path.join(source, "img_align_celeba")):
        root = os.path.join(source, "img_align_celeba")
    paths = sources.list_images(root)
    classes, class_ids = sources.folder_classes(root, paths)
    crop = options.crop or ("carpedm20" if kind == "celeba" else "center")
    if crop not in sources.CROPS:
        raise DataError(f"--crop {crop!r}: must be one of {', '.join(sources.CROPS)}")
    items = list(zip(paths, class_ids.tolist()))
    kwargs = {"size": options.size, "channels": options.channels, "crop": crop, "max_pixels": options.max_pixels}
    return Plan(kind, load_image_files, items, kwargs, {"classes": classes, "crop": crop})


def load_image_files(items, size: int, channels: int, crop: str, max_pixels: int):
    images, classes, bad, reasons = [], [], [], []
    for path, class_id in items:
        try:
            images.append(sources.load_image(path, size, channels, crop, max_pixels))
            classes.append(class_id)
        except DataError as error:
            bad.append(path)
            reasons.append(str(error))
    stacked = np.stack(images) if images else np.zeros((0, size, size, channels), np.uint8)
    return stacked, {"class": np.array(classes, np.int64)}, {"bad_files": bad, "bad_reasons": reasons}


def _plan_cifar10(source: str, options: PrepareOptions, kind: str) -> Plan:
    images, labels, split = sources.read_cifar10(source)
    info = {"classes": list(sources.CIFAR_CLASSES), "splits": ["train", "test"]}
    return Plan(kind, load_arrays, (images, labels, split), {"size": options.size, "names": ("class", "split")}, info)


def _plan_fashion_mnist(source: str, options: PrepareOptions, kind: str) -> Plan:
    root = sources.FASHION_ROOT if source == "fashion-mnist" else source
    images, labels, split = sources.read_fashion_mnist(root)
    info = {"splits": ["train", "test"]}
    return Plan(kind, load_arrays, (images, labels, split), {"size": options.size, "names": ("class", "split")}, info)


def load_arrays(items, size: int, names: tuple[str, ...]):
    images, *labels = items
    return sources.resize_images(images, size), dict(zip(names, labels)), {}


def _plan_hdf5_flat(source: str, options: PrepareOptions, kind: str) -> Plan:
    count, side, channels = sources.hdf5_flat_shape(source, options.source_size)
    rows = np.arange(count)  # items are row numbers; a shard reads its contiguous range
    kwargs = {"path": os.path.abspath(source), "side": side, "source_channels": channels, "size": options.size}
    return Plan(kind, load_hdf5_rows, rows, kwargs, {"source_size": side, "source_channels": channels})


def load_hdf5_rows(rows, path: str, side: int, source_channels: int, size: int):
    if not len(rows):
        return np.zeros((0, size, size, source_channels), np.uint8), {}, {}
    images = sources.read_hdf5_flat(path, int(rows[0]), int(rows[-1]) + 1, side, source_channels)
    return sources.resize_images(images, size), {}, {}


def _plan_glyphs(source: str, options: PrepareOptions, kind: str) -> Plan:
    fonts = sources.parse_fonts(options.fonts)
    for path, face in fonts:
        sources.load_font(path, face, 16)  # refuse a missing or unreadable font before any work
    codes = sources.parse_charset(options.charset, fonts)
    if not codes:
        raise DataError(f"--charset {options.charset or 'common'}: no characters (the fonts share none?)")
    items = [(code, style) for code in codes for style in range(len(fonts))]  # every style of a char together
    info = {"fonts": [{"file": path, "face": face} for path, face in fonts], "charset": options.charset or "common"}
    return Plan(kind, load_glyphs, items, {"fonts": fonts, "size": options.size}, info)


def load_glyphs(items, fonts: list[tuple[str, int]], size: int):
    """Render (code point, style) items; glyphs a font lacks (tofu or blank) are left out and counted."""
    images = np.zeros((len(items), size, size, 1), np.uint8)
    real = np.zeros(len(items), bool)
    for style, (path, face) in enumerate(fonts):
        rows = [i for i, (_, s) in enumerate(items) if s == style]
        rendered, is_real = sources.render_font_glyphs([items[i][0] for i in rows], path, face, size)
        images[rows], real[rows] = rendered, is_real
    codes = np.array([code for code, _ in items], np.int32)
    styles = np.array([style for _, style in items], np.int16)
    missing = {str(style): int(((styles == style) & ~real).sum()) for style in range(len(fonts))}
    return images[real], {"codepoint": codes[real], "style": styles[real]}, {"missing_glyphs": missing}


def _plan_cns(source: str, options: PrepareOptions, kind: str) -> Plan:
    root = sources.CNS_ROOT if source == "cns" else source
    items = sources.cns_files(root)
    return Plan(kind, load_cns, items, {"size": options.size}, {"planes": list(sources.CNS_PLANES)})


def load_cns(items, size: int):
    images, codes, planes, bad, reasons = [], [], [], [], []
    for path, code, plane in items:
        try:
            images.append(sources.load_cns_glyph(path, size))
            codes.append(code)
            planes.append(plane)
        except DataError as error:
            bad.append(path)
            reasons.append(str(error))
    stacked = np.stack(images) if images else np.zeros((0, size, size, 1), np.uint8)
    labels = {"codepoint": np.array(codes, np.int32), "plane": np.array(planes, np.uint8)}
    return stacked, labels, {"bad_files": bad, "bad_reasons": reasons}


def load_shapes(items, size: int):
    images, y, masks = sources.crs_render(list(items), size)
    return images, {"y": y, "masks": masks}, {}


def load_four_shapes(items, size: int):
    images, y, masks = sources.four_render(list(items), size)
    return images, {"y": y, "masks": masks}, {}
