"""Image files: an image folder (`folder`, `celeba`), cropped and resized; the resizing and channel
conversion every source uses (always Pillow's LANCZOS, after the crop)."""

from __future__ import annotations

import contextlib
import os
import re
import warnings

import numpy as np
from PIL import Image
from tqdm import tqdm

from began_dist.data.dataset import DataError

MAX_PIXELS = 89_478_485  # image files declaring more pixels are refused unread: Pillow's own default limit
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """A square (H, W) or (H, W, C) uint8 image resized to size x size with LANCZOS."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    squeeze = image.ndim == 3 and image.shape[2] == 1
    resized = np.asarray(Image.fromarray(image[..., 0] if squeeze else image).resize((size, size), Image.LANCZOS))
    return resized[..., None] if squeeze else resized


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w, C) uint8 -> (N, size, size, C) with LANCZOS (a no-op at the same size)."""
    if images.shape[1:3] == (size, size):
        return images
    if not len(images):
        return np.zeros((0, size, size, images.shape[-1]), dtype=np.uint8)
    return np.stack([resize_image(image, size) for image in images])


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """(N, H, W, C) uint8 with C converted to `channels`: Pillow's luma for RGB -> L, copies for L -> RGB."""
    if images.shape[-1] == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=-1)
    return np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in images])[..., None]


# -- image folder ------------------------------------------------------------------------
def list_images(root: str) -> list[str]:
    """Image files under `root`, recursive, in sorted path order."""
    if not os.path.isdir(root):
        raise DataError(f"data.path: no such directory {root!r}")
    paths = [
        os.path.join(dirpath, name)
        for dirpath, _, names in os.walk(root)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    ]
    if not paths:
        raise DataError(f"data.path: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root!r}")
    return sorted(paths)


CROPS = {  # the known CelebA recipes of public BEGAN ports, as (x, y, side) of the crop or a rule
    "carpedm20": (25, 50, 128),  # carpedm20's BEGAN ports: 128x128 at (y=50, x=25) of the 178x218 image
    "center160": (None, None, 160),  # a centred 160x160 square
    "center": (None, None, None),  # the largest centred square
    "none": None,  # the whole image, squashed to a square
}


def crop_resize(image: Image.Image, size: int, crop: str = "center") -> Image.Image:
    """Crop by a `CROPS` preset, then resize to size x size with LANCZOS."""
    if crop not in CROPS:
        raise DataError(f"--crop {crop!r}: must be one of {', '.join(CROPS)}")
    if CROPS[crop] is not None:
        x, y, side = CROPS[crop]
        side = min(side or min(image.size), *image.size)
        left = (image.width - side) // 2 if x is None else x
        top = (image.height - side) // 2 if y is None else y
        image = image.crop((left, top, left + side, top + side))
    return image.resize((size, size), Image.LANCZOS)


@contextlib.contextmanager
def pixel_limit(max_pixels: int):
    """Pillow's own decompression-bomb check, at `max_pixels`: Pillow checks the declared size at
    open and again where a format learns a new one (GIF frames, ...); it warns above
    MAX_IMAGE_PIXELS, which this makes an error, and raises above twice it."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def load_image(path: str, size: int, channels: int, crop: str = "center", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One image file as (size, size, channels) uint8; DataError naming the file if it cannot be decoded
    or declares more than `max_pixels` pixels (then nothing is decoded)."""
    try:
        with pixel_limit(max_pixels), Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        declared = re.search(r"\((\d+) pixels\)", str(error))  # Pillow's message carries the declared size
        size_text = f"{int(declared.group(1)):,} pixels" if declared else "its size"
        raise DataError(
            f"unreadable image {path}: {size_text}, more than the limit of {max_pixels:,} "
            f"(prepare --max-pixels); refused undecoded (a decompression bomb?)"
        ) from None
    except (OSError, ValueError, SyntaxError) as error:  # Pillow raises all three for damaged files
        raise DataError(f"unreadable image {path}: {error}") from None
    array = np.asarray(crop_resize(image, size, crop))
    return array[..., None] if channels == 1 else array


def folder_classes(root: str, paths: list[str]) -> tuple[list[str], np.ndarray]:
    """Class names (sorted first-level sub-folders) and each path's class id (0 for files at the top)."""
    relative = [os.path.relpath(p, root).split(os.sep) for p in paths]
    classes = sorted({parts[0] for parts in relative if len(parts) > 1})
    class_ids = {name: i for i, name in enumerate(classes)}
    return classes, np.array([class_ids.get(parts[0], 0) if len(parts) > 1 else 0 for parts in relative], np.int64)


def image_folder(root: str, size: int, channels: int, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, C) uint8 images and (N,) class ids (sorted first-level sub-folder names; 0 if none)."""
    paths = list_images(root)[: limit or None]
    _, labels = folder_classes(root, paths)
    images = [load_image(p, size, channels) for p in tqdm(paths, desc="loading images", unit="img", leave=False)]
    return np.stack(images), labels
