"""Image sources, one section each; images are uint8 arrays (N, H, W, C).

- glyphs: CJK characters rendered with Pillow from one or more fonts (by default the
  bundled Noto Sans CJK of the `noto-cjk-sans-otc` package), white ink on black;
  characters a font lacks (its .notdef box, or no ink) are detected and skipped.
- shapes: the CRS toy data of SPEC 2 (square, cross, square+cross) with per-component masks.
- folder / celeba: an image folder, recursive, cropped (SPEC 1 presets) and resized.
- cifar10: the CIFAR-10 python archive, read with a restricted unpickler.
- hdf5-flat: seed 001's single HDF5 file of flattened uint8 rows.
- cns: the CNS 11643 glyph bitmaps of Debian's fonts-cns11643-pixmaps (planes 1-3).
- fashion-mnist: the IDX files of Debian's dataset-fashion-mnist.

Resizing is always Pillow's LANCZOS, after the crop. Nothing downloads.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import math
import os
import pickle
import re
import subprocess
import tarfile
import unicodedata
import warnings
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from began_dist.data import hdf5
from began_dist.data.dataset import DataError

FIRST_CJK = 0x4E00  # start of the CJK Unified Ideographs block
LAST_CJK = 0x9FFF
MAX_PIXELS = 89_478_485  # image files declaring more pixels are refused unread: Pillow's own default limit
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


# -- glyphs ------------------------------------------------------------------------------
def default_font() -> str:
    try:
        import noto_cjk_sans_otc
    except ImportError:
        raise DataError("data.font: no font given and the package noto-cjk-sans-otc is not installed") from None
    return os.path.join(os.path.dirname(noto_cjk_sans_otc.__file__), "NotoSansCJK-Regular.ttc")


def load_font(path: str, index: int, pixel_size: int) -> ImageFont.FreeTypeFont:
    if not os.path.isfile(path):
        raise DataError(f"data.font: no such font file {path!r}")
    try:
        return ImageFont.truetype(path, size=pixel_size, index=index)
    except OSError as error:
        raise DataError(f"data.font: cannot read {path!r} (face {index}): {error}") from None


def render_glyph(char: str, font: ImageFont.FreeTypeFont, size: int) -> np.ndarray:
    image = Image.new("L", (size, size), 0)
    ImageDraw.Draw(image).text((size / 2, size / 2), char, fill=255, font=font, anchor="mm")
    return np.asarray(image)


def notdef_glyph(font: ImageFont.FreeTypeFont, size: int) -> np.ndarray:
    """What the font draws for a character it lacks: unassigned U+0378 renders as .notdef (tofu)."""
    return render_glyph("\u0378", font, size)


def is_real_glyph(image: np.ndarray, notdef: np.ndarray) -> bool:
    """Not blank and not the tofu box (some fonts have an empty .notdef, hence both tests)."""
    return bool(image.any()) and not np.array_equal(image, notdef)


def glyph_characters(count: int, font: ImageFont.FreeTypeFont, size: int) -> list[str]:
    """The first `count` ideographs from U+4E00 that the font really has (not its .notdef box)."""
    missing = notdef_glyph(font, size)
    chars = []
    for code in range(FIRST_CJK, LAST_CJK + 1):
        char = chr(code)
        if is_real_glyph(render_glyph(char, font, size), missing):
            chars.append(char)
            if len(chars) == count:
                return chars
    raise DataError(f"data.glyphs={count}: the font has only {len(chars)} CJK ideographs")


def glyph_pixel_size(size: int) -> int:
    """Font size for `size`-pixel glyph images (a small margin keeps strokes off the border)."""
    return round(size * 0.875)


def parse_fonts(spec: str) -> list[tuple[str, int]]:
    """`PATH[:FACE],...` -> [(path, face index)]; empty = the bundled Noto Sans CJK, face 2 (SC)."""
    fonts = []
    for item in (part.strip() for part in (spec or "").split(",")):
        if not item:
            continue
        path, colon, face = item.rpartition(":")
        if not colon or not face.isdigit():
            path, face = item, "0"
        fonts.append((os.path.expanduser(path), int(face)))
    return fonts or [(default_font(), 2)]


def font_codepoints(path: str, face: int) -> set[int]:
    """Code points in the font's cmap (fontTools); a cheap first filter before the render test."""
    from fontTools.ttLib import TTFont

    try:
        with TTFont(path, fontNumber=face, lazy=True) as font:
            return set(font.getBestCmap() or {})
    except Exception as error:  # fontTools raises many types for a damaged font file
        raise DataError(f"--fonts: cannot read the character map of {path} (face {face}): {error}") from None


def parse_charset(spec: str, fonts: list[tuple[str, int]]) -> list[int]:
    """`--charset`: a range `4E00-9FFF` (hex, `U+` optional), a text file of characters, or `common`.

    `common` (the default) is every CJK Unified Ideograph (U+4E00-9FFF) in the cmap of every font.
    """
    spec = (spec or "common").strip()
    if spec == "common":
        shared = set(range(FIRST_CJK, LAST_CJK + 1))
        for path, face in fonts:
            shared &= font_codepoints(path, face)
        return sorted(shared)
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8") as handle:
            return sorted({ord(char) for char in handle.read() if not char.isspace()})
    low, _, high = spec.upper().replace("U+", "").partition("-")
    try:
        first, last = int(low, 16), int(high or low, 16)
    except ValueError:
        raise DataError(f"--charset {spec!r}: expected a hex range like 4E00-9FFF, a file, or common") from None
    if not 0 <= first <= last <= 0x10FFFF:
        raise DataError(f"--charset {spec!r}: not a range of code points")
    return list(range(first, last + 1))


def render_font_glyphs(codes: list[int], path: str, face: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 1) glyph images of `codes` in one font and a bool mask of the real ones."""
    font = load_font(path, face, glyph_pixel_size(size))
    missing = notdef_glyph(font, size)
    images = np.stack([render_glyph(chr(code), font, size) for code in codes]) if codes else np.zeros((0, size, size))
    real = np.array([is_real_glyph(image, missing) for image in images], dtype=bool)
    return images[..., None].astype(np.uint8), real


def render_glyphs(
    size: int, count: int, font_path: str = "", font_index: int = 2, chars: Optional[list[str]] = None
) -> tuple[np.ndarray, list[str]]:
    """(N, size, size, 1) uint8 glyph images and the characters they show."""
    font = load_font(font_path or default_font(), font_index, glyph_pixel_size(size))
    chars = chars or glyph_characters(count, font, size)
    images = np.stack([render_glyph(c, font, size) for c in chars])[..., None]
    return images, chars


# -- CRS shapes (SPEC 2) -----------------------------------------------------------------
CRS_SIZE = 64  # CRS images are defined at 64x64 and resized for other sizes
CRS_CENTRES = range(29, 36)
CRS_HALF_SIZES = (21, 18, 16)
CRS_ANGLES = range(-10, 10)  # degrees
CRS_THICKNESSES = (1, 2, 3, 4)
CRS_LABELS = {"square+cross": (1, 1), "square": (0, 1), "cross": (1, 0)}  # y = [cross, square]


def _rotated_rect(cx, cy, half_w, half_h, angle_deg) -> list[tuple[float, float]]:
    a = math.radians(angle_deg)
    cos, sin = math.cos(a), math.sin(a)
    corners = ((-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h))
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in corners]


def crs_components(kind: str, cx: int, cy: int, half: int, angle: int, thick: int) -> np.ndarray:
    """The (2, 64, 64) component images [cross, square] of one CRS image (a component is 0 if absent).

    The square is a hollow frame of border 2d alone, d beside a cross; the cross is two bars
    of length 2s and width 2d. Each component is drawn alone, so it is also that component's mask.
    """
    parts = np.zeros((2, CRS_SIZE, CRS_SIZE), dtype=np.uint8)
    if "cross" in kind:
        image = Image.new("L", (CRS_SIZE, CRS_SIZE), 0)
        draw = ImageDraw.Draw(image)
        draw.polygon(_rotated_rect(cx, cy, half, thick, angle), fill=255)
        draw.polygon(_rotated_rect(cx, cy, thick, half, angle), fill=255)
        parts[0] = np.asarray(image)
    if "square" in kind:
        border = thick if kind == "square+cross" else 2 * thick
        image = Image.new("L", (CRS_SIZE, CRS_SIZE), 0)
        draw = ImageDraw.Draw(image)
        draw.polygon(_rotated_rect(cx, cy, half, half, angle), fill=255)
        draw.polygon(_rotated_rect(cx, cy, half - border, half - border, angle), fill=0)
        parts[1] = np.asarray(image)
    return parts


def crs_image(kind: str, cx: int, cy: int, half: int, angle: int, thick: int) -> np.ndarray:
    """One 64x64 CRS image: a hollow square frame, a cross, or both (frame border d with a cross)."""
    return crs_components(kind, cx, cy, half, angle, thick).max(axis=0)


def crs_grid(kinds: list[str], limit: int = 0) -> list[tuple]:
    """The CRS variants (kind, cx, cy, half, angle, thick); `limit` keeps an evenly spread subset."""
    for kind in kinds:
        if kind not in CRS_LABELS:
            raise DataError(f"data.shapes: unknown kind {kind!r}; allowed: {', '.join(CRS_LABELS)}")
    grid = list(itertools.product(kinds, CRS_CENTRES, CRS_CENTRES, CRS_HALF_SIZES, CRS_ANGLES, CRS_THICKNESSES))
    if limit:
        grid = [grid[i] for i in np.linspace(0, len(grid) - 1, min(limit, len(grid))).round().astype(int)]
    return grid


def crs_render(grid: list[tuple], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, size, size, 1) images, (N, 2) labels y = [cross, square], (N, 2, size, size) component masks."""
    images, masks = render_parts([crs_components(*variant) for variant in grid], size)
    return images, np.array([CRS_LABELS[variant[0]] for variant in grid], dtype=np.uint8), masks


def render_parts(parts: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image its (K, 64, 64) components -> (N, size, size, 1) images (their max) and (N, K, size, size) masks."""
    images = np.stack([_resize(p.max(axis=0), size) for p in parts])[..., None]
    masks = np.stack([[_resize(component, size) for component in p] for p in parts])
    return images, masks


# -- four shapes (the harder set) ---------------------------------------------------------
FOUR_SHAPES = ("cross", "square", "circle", "triangle")  # y = [cross, square, circle, triangle]
FOUR_COUNT = 12000  # images in the in-memory training split (data.limit takes fewer)
FOUR_LOW, FOUR_HIGH = (16, 16, 8, -30, 1), (49, 49, 15, 30, 4)  # cx, cy, half size, angle, thickness: [low, high)
FOUR_SPLITS = {"train": "every set of 1 to 3 shapes but the cross alone", "heldout": "the cross alone"}


def four_combinations(split: str) -> list[tuple[int, ...]]:
    """Label vectors of a split: train has 1 to 3 of the 4 shapes per image, except the cross alone (held out)."""
    combos = [y for y in itertools.product((0, 1), repeat=4) if 1 <= sum(y) <= 3]
    cross_alone = (1, 0, 0, 0)
    return [y for y in combos if y != cross_alone] if split == "train" else [cross_alone]


def four_variants(split: str, count: int, seed: int = 0) -> list[tuple]:
    """`count` images of a split as (y, params per shape): each shape anywhere, of its own size, angle and width."""
    rng = np.random.default_rng(seed + (split == "heldout"))
    combos = four_combinations(split)
    variants = []
    for i in range(count):
        y = combos[i % len(combos)]
        params = tuple(tuple(int(v) for v in rng.integers(FOUR_LOW, FOUR_HIGH)) for _ in FOUR_SHAPES)
        variants.append((y, params))
    return variants


def _triangle(cx, cy, half, angle_deg) -> list[tuple[float, float]]:
    angles = [math.radians(angle_deg + 90 + 120 * j) for j in range(3)]
    return [(cx + half * math.cos(a), cy - half * math.sin(a)) for a in angles]


def four_components(y: tuple[int, ...], params: tuple) -> np.ndarray:
    """(4, 64, 64): each present shape drawn alone (a cross, a hollow square, a ring, a triangle outline)."""
    parts = np.zeros((len(FOUR_SHAPES), CRS_SIZE, CRS_SIZE), dtype=np.uint8)
    for k, (present, (cx, cy, half, angle, thick)) in enumerate(zip(y, params)):
        if not present:
            continue
        image = Image.new("L", (CRS_SIZE, CRS_SIZE), 0)
        draw = ImageDraw.Draw(image)
        if FOUR_SHAPES[k] == "cross":
            draw.polygon(_rotated_rect(cx, cy, half, thick, angle), fill=255)
            draw.polygon(_rotated_rect(cx, cy, thick, half, angle), fill=255)
        elif FOUR_SHAPES[k] == "square":
            draw.polygon(_rotated_rect(cx, cy, half, half, angle), outline=255, width=2 * thick)
        elif FOUR_SHAPES[k] == "circle":
            draw.ellipse((cx - half, cy - half, cx + half, cy + half), outline=255, width=2 * thick)
        else:
            draw.polygon(_triangle(cx, cy, half, angle), outline=255, width=2 * thick)
        parts[k] = np.asarray(image)
    return parts


def four_render(variants: list[tuple], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, size, size, 1) images, (N, 4) labels, (N, 4, size, size) masks of four-shape variants."""
    images, masks = render_parts([four_components(*variant) for variant in variants], size)
    return images, np.array([variant[0] for variant in variants], dtype=np.uint8), masks


def crs_shapes(size: int, kinds: list[str], limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every CRS variant (7 x 7 centres x 3 sizes x 20 angles x 4 thicknesses = 11,760 per kind).

    Returns (N, size, size, 1) uint8 images and (N, 2) labels y = [cross, square].
    `limit` keeps an evenly spread subset, so small runs still see every kind.
    """
    grid = crs_grid(kinds, limit)
    images = np.stack([_resize(crs_image(*variant), size) for variant in grid])
    labels = np.array([CRS_LABELS[variant[0]] for variant in grid], dtype=np.uint8)
    return images[..., None], labels


def _resize(image: np.ndarray, size: int) -> np.ndarray:
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
    return np.stack([_resize(image, size) for image in images])


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


CROPS = {  # SPEC 1: the known CelebA recipes, as (x, y, side) of the crop or a rule
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


def centre_crop_resize(image: Image.Image, size: int) -> Image.Image:
    return crop_resize(image, size, "center")


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
        raise DataError(f"unreadable image {path}: {size_text}, more than the limit of {max_pixels:,} "
                        f"(prepare --max-pixels); refused undecoded (a decompression bomb?)") from None
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


# -- CIFAR-10 python archive -------------------------------------------------------------
CIFAR_MEMBERS = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]  # split 0 = train, 1 = test
CIFAR_MEMBER_BYTES = 32 << 20  # a CIFAR-10 batch pickle is 31.0 MB (10,000 x 3,072 pixel bytes, labels, names)
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _numpy_global(module: str, name: str):
    import importlib

    return getattr(importlib.import_module(module), name)


class RestrictedUnpickler(pickle.Unpickler):
    """Admits only what CIFAR's pickles contain: numpy array reconstruction, dtype and ndarray
    (plus `_codecs.encode`, which is how Python 3 writes bytes into protocol-2 pickles).

    Any other global (os.system, builtins.eval, ...) is refused before it is looked up,
    so nothing in a hostile file runs.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
        ("_codecs", "encode"): ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return _numpy_global(*self.ALLOWED[module, name])


def _load_cifar_member(archive: tarfile.TarFile, member: tarfile.TarInfo, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = archive.extractfile(member).read()
        batch = RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, OSError) as error:
        raise DataError(f"{where}: refused to unpickle {member.name}: {error}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{where}: {member.name} is not a CIFAR-10 batch (no data/labels)")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"], dtype=np.int64)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (len(labels), 3 * 32 * 32):
        raise DataError(f"{where}: {member.name}: data is not N x 3072 uint8")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar10(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`cifar-10-python.tar.gz` as distributed -> (N, 32, 32, 3) images, class ids, split (0 train, 1 test)."""
    try:
        with tarfile.open(path, "r:*") as archive:
            members = {os.path.basename(m.name): m for m in archive.getmembers() if m.isfile()}
            missing = [name for name in CIFAR_MEMBERS if name not in members]
            if missing:
                raise DataError(f"{path}: not the CIFAR-10 python archive (no {', '.join(missing)})")
            for name in CIFAR_MEMBERS:  # sizes come from the tar headers: refuse before reading a byte
                if members[name].size > CIFAR_MEMBER_BYTES:
                    raise DataError(f"{path}: member {members[name].name} is {members[name].size:,} bytes, more "
                                    f"than a CIFAR-10 batch can be ({CIFAR_MEMBER_BYTES:,}); refused unread")
            parts = [_load_cifar_member(archive, members[name], path) for name in CIFAR_MEMBERS]
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(f"{path}: unreadable archive: {error}") from None
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    split = np.concatenate([np.full(len(lb), int(name == "test_batch"), np.uint8) for (_, lb), name in
                            zip(parts, CIFAR_MEMBERS)])
    return np.ascontiguousarray(images), labels, split


# -- seed 001's flat HDF5 ------------------------------------------------------------------
def hdf5_flat_shape(path: str, source_size: int) -> tuple[int, int, int]:
    """(count, H, C) of a file with dataset `images` of N x H*W*C flattened uint8 rows."""
    try:
        with hdf5.open_file(path, path) as handle:
            images = hdf5.dataset(handle, "images", path)
            if images is None or images.ndim != 2 or images.dtype != np.uint8:
                raise DataError(f"{path}: expected a dataset 'images' of N x H*W*C uint8 rows")
            count, row = images.shape
    except (OSError, KeyError) as error:
        raise DataError(f"{path}: unreadable HDF5 file: {error}") from None
    side = source_size or int(round(math.sqrt(row / 3)))
    channels = row // (side * side)
    if channels not in (1, 3) or channels * side * side != row:
        raise DataError(f"{path}: rows of {row} bytes are not H*H*1 or H*H*3 with H={side}; give --source-size H")
    return count, side, channels


def read_hdf5_flat(path: str, start: int, stop: int, side: int, channels: int) -> np.ndarray:
    try:
        with hdf5.open_file(path, path) as handle:
            rows = hdf5.dataset(handle, "images", path, required=True)[start:stop]
    except (OSError, KeyError) as error:
        raise DataError(f"{path}: unreadable rows {start}..{stop}: {error}") from None
    return rows.reshape(-1, side, side, channels)


# -- CNS 11643 pixmaps (Debian fonts-cns11643-pixmaps) ------------------------------------
CNS_ROOT = "/usr/share/pixmaps/cns11643"
CNS_PLANES = (1, 2, 3)  # the Hanzi planes glibc's EUC-TW maps to Unicode


def euc_tw_to_unicode(names: list[str]) -> list[Optional[str]]:
    """EUC-TW file names (8 hex digits, `8ea<plane>` + code) -> one Unicode character each, or None.

    Python has no EUC-TW codec; glibc's `iconv` has. Plane 1 decodes without its 8ea1 prefix.
    """
    raws = [bytes.fromhex(name[4:8] if name[:4] == "8ea1" else name[:8]) for name in names]
    try:
        done = subprocess.run(["iconv", "-c", "-f", "EUC-TW", "-t", "UTF-8"], input=b"\n".join(raws) + b"\n",
                              capture_output=True, check=False)
    except OSError as error:
        raise DataError(f"cns: the iconv program (glibc) is needed to map EUC-TW names: {error}") from None
    lines = done.stdout.decode("utf-8").split("\n")[: len(raws)]
    if len(lines) != len(raws):
        raise DataError(f"cns: iconv returned {len(lines)} names for {len(raws)}")
    return [line if len(line) == 1 else None for line in lines]


def cns_files(root: str = CNS_ROOT) -> list[tuple[str, int, int]]:
    """(path, code point, plane) of every Hanzi bitmap of planes 1-3, in sorted path order."""
    found = []
    for plane in CNS_PLANES:
        folder = os.path.join(root, f"a{plane}")
        if not os.path.isdir(folder):
            raise DataError(f"cns: no plane directory {folder} (apt-get install fonts-cns11643-pixmaps)")
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".png") and len(n) == 12)
        for name, char in zip(names, euc_tw_to_unicode([n[:8].lower() for n in names])):
            if char and unicodedata.name(char, "").startswith("CJK UNIFIED IDEOGRAPH"):
                found.append((os.path.join(folder, name), ord(char), plane))
    return sorted(found)


def load_cns_glyph(path: str, size: int) -> np.ndarray:
    """A CNS bitmap (black on white, 24 px) as white ink on black like the rendered glyphs, size x size."""
    return 255 - load_image(path, size, 1, crop="center")


# -- Fashion-MNIST IDX files (Debian dataset-fashion-mnist) -------------------------------
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_SPLITS = ("train", "t10k")  # split 0 = train, 1 = test
IDX_MAX_BYTES = 1 << 30  # refuse an IDX header promising more data than this
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """An IDX file (optionally .gz): magic 0 0 dtype ndim, big-endian int32 dims, then the data.

    Only what the header promises is decompressed, and a promise above IDX_MAX_BYTES is refused
    unread: a small .gz can expand to any size (Fashion-MNIST's largest file is 47 MB).
    """
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as handle:
            head = handle.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_DTYPES:
                raise DataError(f"{path}: not an IDX file (bad magic)")
            ndim, dtype = head[3], np.dtype(IDX_DTYPES[head[2]])
            dims = np.frombuffer(handle.read(4 * ndim), ">i4")
            if len(dims) != ndim or (dims < 0).any():
                raise DataError(f"{path}: not an IDX file (bad dimensions)")
            expected = int(np.prod(dims.astype(object))) * dtype.itemsize
            if expected > IDX_MAX_BYTES:
                raise DataError(f"{path}: the header promises {expected:,} bytes of data, more than "
                                f"{IDX_MAX_BYTES:,}; refused unread")
            raw = handle.read(expected + 1)
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: unreadable IDX file: {error}") from None
    if len(raw) > expected:
        raise DataError(f"{path}: more data than the {expected} bytes the header promises")
    if len(raw) < expected:
        raise DataError(f"{path}: {len(raw)} bytes of data, the header promises {expected} (truncated?)")
    return np.frombuffer(raw, dtype).reshape(dims.tolist())


def _idx_file(root: str, stem: str) -> str:
    for name in (f"{stem}.gz", stem):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    raise DataError(f"fashion-mnist: no {stem}[.gz] in {root} (apt-get install dataset-fashion-mnist)")


def read_fashion_mnist(root: str = FASHION_ROOT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 28, 28, 1) images, class ids and split (0 train, 1 test) of the train then t10k files."""
    images, labels, split = [], [], []
    for index, name in enumerate(FASHION_SPLITS):
        part = read_idx(_idx_file(root, f"{name}-images-idx3-ubyte"))
        classes = read_idx(_idx_file(root, f"{name}-labels-idx1-ubyte"))
        if part.ndim != 3 or len(part) != len(classes):
            raise DataError(f"fashion-mnist: {name} images {part.shape} do not match {len(classes)} labels")
        images.append(part)
        labels.append(classes.astype(np.int64))
        split.append(np.full(len(part), index, np.uint8))
    return np.concatenate(images)[..., None], np.concatenate(labels), np.concatenate(split)
