"""Shape sources: the CRS toy data (square, cross, square+cross) with per-component masks, and the
harder four-shape set."""

from __future__ import annotations

import itertools
import math

import numpy as np
from PIL import Image, ImageDraw

from began_dist.data.dataset import DataError
from began_dist.data.sources.folder import resize_image

# -- CRS shapes (docs/multigen.md) --------------------------------------------------------
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
    images = np.stack([resize_image(p.max(axis=0), size) for p in parts])[..., None]
    masks = np.stack([[resize_image(component, size) for component in p] for p in parts])
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
    images = np.stack([resize_image(crs_image(*variant), size) for variant in grid])
    labels = np.array([CRS_LABELS[variant[0]] for variant in grid], dtype=np.uint8)
    return images[..., None], labels
