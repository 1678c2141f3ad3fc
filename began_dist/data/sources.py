"""Built-in image sources, one function each; all return uint8 arrays (N, H, W, C).

- glyphs: CJK characters rendered with Pillow from a font (by default the bundled
  Noto Sans CJK of the `noto-cjk-sans-otc` package), white ink on black.
- shapes: the CRS toy data of SPEC 2 (square, cross, square+cross), generated.
- folder: a user's image folder, recursive, centre-cropped and resized.
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from began_dist.data.dataset import DataError

FIRST_CJK = 0x4E00  # start of the CJK Unified Ideographs block
LAST_CJK = 0x9FFF
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


def glyph_characters(count: int, font: ImageFont.FreeTypeFont, size: int) -> list[str]:
    """The first `count` ideographs from U+4E00 that the font really has (not its .notdef box)."""
    missing = render_glyph("\u0378", font, size)  # an unassigned code point renders as .notdef
    chars = []
    for code in range(FIRST_CJK, LAST_CJK + 1):
        char = chr(code)
        image = render_glyph(char, font, size)
        if image.any() and not np.array_equal(image, missing):
            chars.append(char)
            if len(chars) == count:
                return chars
    raise DataError(f"data.glyphs={count}: the font has only {len(chars)} CJK ideographs")


def render_glyphs(
    size: int, count: int, font_path: str = "", font_index: int = 2, chars: Optional[list[str]] = None
) -> tuple[np.ndarray, list[str]]:
    """(N, size, size, 1) uint8 glyph images and the characters they show."""
    font = load_font(font_path or default_font(), font_index, round(size * 0.875))
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


def crs_image(kind: str, cx: int, cy: int, half: int, angle: int, thick: int) -> np.ndarray:
    """One 64x64 CRS image: a hollow square frame, a cross, or both (frame border d with a cross)."""
    image = Image.new("L", (CRS_SIZE, CRS_SIZE), 0)
    draw = ImageDraw.Draw(image)
    if "square" in kind:
        border = thick if kind == "square+cross" else 2 * thick
        draw.polygon(_rotated_rect(cx, cy, half, half, angle), fill=255)
        draw.polygon(_rotated_rect(cx, cy, half - border, half - border, angle), fill=0)
    if "cross" in kind:
        draw.polygon(_rotated_rect(cx, cy, half, thick, angle), fill=255)
        draw.polygon(_rotated_rect(cx, cy, thick, half, angle), fill=255)
    return np.asarray(image)


def crs_shapes(size: int, kinds: list[str], limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every CRS variant (7 x 7 centres x 3 sizes x 20 angles x 4 thicknesses = 11,760 per kind).

    Returns (N, size, size, 1) uint8 images and (N, 2) labels y = [cross, square].
    `limit` keeps an evenly spread subset, so small runs still see every kind.
    """
    for kind in kinds:
        if kind not in CRS_LABELS:
            raise DataError(f"data.shapes: unknown kind {kind!r}; allowed: {', '.join(CRS_LABELS)}")
    grid = list(itertools.product(kinds, CRS_CENTRES, CRS_CENTRES, CRS_HALF_SIZES, CRS_ANGLES, CRS_THICKNESSES))
    if limit:
        grid = [grid[i] for i in np.linspace(0, len(grid) - 1, min(limit, len(grid))).round().astype(int)]
    images = np.stack([_resize(crs_image(k, cx, cy, s, a, d), size) for k, cx, cy, s, a, d in grid])
    labels = np.array([CRS_LABELS[item[0]] for item in grid], dtype=np.uint8)
    return images[..., None], labels


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))


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


def centre_crop_resize(image: Image.Image, size: int) -> Image.Image:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)


def load_image(path: str, size: int, channels: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError) as error:
        raise DataError(f"unreadable image {path}: {error}") from None
    array = np.asarray(centre_crop_resize(image, size))
    return array[..., None] if channels == 1 else array


def image_folder(root: str, size: int, channels: int, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, C) uint8 images and (N,) class ids (sorted first-level sub-folder names; 0 if none)."""
    paths = list_images(root)[: limit or None]
    classes = sorted({os.path.relpath(p, root).split(os.sep)[0] for p in paths if os.sep in os.path.relpath(p, root)})
    class_ids = {name: i for i, name in enumerate(classes)}
    images = [load_image(p, size, channels) for p in tqdm(paths, desc="loading images", unit="img", leave=False)]
    labels = [class_ids.get(os.path.relpath(p, root).split(os.sep)[0], 0) for p in paths]
    return np.stack(images), np.array(labels, dtype=np.int64)
