"""Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018, ProGAN).

As ProGAN's `metrics/sliced_wasserstein.py`, with a seeded generator: levels from
full size down to 16 px; 128 random 7x7 patches per image and level (3 channels,
147 values); each set normalised per channel and level; 4 x 128 random unit
directions; sorted projections compared by mean |difference|; x 1e3. A second,
independent real sample gives the noise floor (`swd_floor`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from began_dist.eval.metrics.registry import MetricContext, as_float, register

NHOOD = 7  # patch side, pixels
PATCHES_PER_IMAGE = 128
DIRS_PER_REPEAT = 128
DIR_REPEATS = 4
MIN_RESOLUTION = 16
BATCH = 256  # images per pyramid pass
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
FILTER = torch.outer(_BINOMIAL, _BINOMIAL) / 256.0  # 5x5, sums to 1 (cv2.pyrDown)


def _blur(images: torch.Tensor, gain: float) -> torch.Tensor:
    """Per-channel 5x5 binomial filter; torch 'reflect' padding = scipy.ndimage mode 'mirror'."""
    channels = images.shape[1]
    weight = (FILTER * gain).expand(channels, 1, 5, 5)
    return F.conv2d(F.pad(images, (2, 2, 2, 2), mode="reflect"), weight, groups=channels)


def pyr_down(images: torch.Tensor) -> torch.Tensor:
    return _blur(images, 1.0)[:, :, ::2, ::2]


def pyr_up(images: torch.Tensor) -> torch.Tensor:
    n, c, h, w = images.shape
    spread = images.new_zeros(n, c, 2 * h, 2 * w)
    spread[:, :, ::2, ::2] = images
    return _blur(spread, 4.0)


def laplacian_pyramid(images: torch.Tensor) -> list[torch.Tensor]:
    """Band-pass levels from full size down to 16 px, finest first; the last is the coarse Gaussian level."""
    levels, current = [], images
    while current.shape[-1] // 2 >= MIN_RESOLUTION:
        smaller = pyr_down(current)
        levels.append(current - pyr_up(smaller))
        current = smaller
    levels.append(current)
    return levels


def resolutions(image_size: int) -> list[int]:
    return [image_size >> i for i in range(len(laplacian_pyramid(torch.zeros(1, 1, image_size, image_size))))]


def _patches(level: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """(B, 3, S, S) -> (B * PATCHES_PER_IMAGE, 3, 7, 7) at centres uniform in [3, S - 3)."""
    b, _, s, _ = level.shape
    half = NHOOD // 2
    ys = torch.from_numpy(rng.integers(half, s - half, size=(b, PATCHES_PER_IMAGE)))
    xs = torch.from_numpy(rng.integers(half, s - half, size=(b, PATCHES_PER_IMAGE)))
    offsets = torch.arange(-half, half + 1)
    rows = (ys[:, :, None] + offsets)[:, :, :, None]  # (B, P, 7, 1)
    cols = (xs[:, :, None] + offsets)[:, :, None, :]  # (B, P, 1, 7)
    picked = level[torch.arange(b)[:, None, None, None], :, rows, cols]  # (B, P, 7, 7, 3)
    return picked.permute(0, 1, 4, 2, 3).reshape(b * PATCHES_PER_IMAGE, 3, NHOOD, NHOOD)


def descriptors(images: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
    """uint8 (N, C, H, W) -> per pyramid level, normalised (N * 128, 147) patch descriptors."""
    rng = np.random.default_rng(seed)
    per_level: list[list[torch.Tensor]] = []
    for batch in images.split(BATCH):
        for i, level in enumerate(laplacian_pyramid(as_float(batch))):
            if i == len(per_level):
                per_level.append([])
            per_level[i].append(_patches(level, rng))
    return [_normalise(torch.cat(chunks)) for chunks in per_level]


def _normalise(patches: torch.Tensor) -> torch.Tensor:
    mean = patches.mean(dim=(0, 2, 3), keepdim=True)
    std = patches.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    return ((patches - mean) / std).flatten(1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, seed: int = 0) -> float:
    """Mean |sorted(a d) - sorted(b d)| over DIR_REPEATS x DIRS_PER_REPEAT random unit directions d."""
    assert a.shape == b.shape, (a.shape, b.shape)
    rng = np.random.default_rng(seed)
    a_np, b_np = a.numpy(), b.numpy()
    distances = []
    for _ in range(DIR_REPEATS):
        dirs = rng.standard_normal((a.shape[1], DIRS_PER_REPEAT)).astype(np.float32)
        dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
        # numpy's sort: torch.sort on the CPU is several times slower here.
        proj_a, proj_b = np.sort(a_np @ dirs, axis=0), np.sort(b_np @ dirs, axis=0)
        distances.append(float(np.abs(proj_a - proj_b).mean()))
    return float(np.mean(distances))


def swd_levels(desc_a: list[torch.Tensor], desc_b: list[torch.Tensor], size: int, seed: int = 0) -> dict:
    """{"swd_<res>": x1e3 per level, finest first, "swd": their mean} between two descriptor sets."""
    values = {f"swd_{size >> i}": 1e3 * sliced_wasserstein(a, b, seed) for i, (a, b) in enumerate(zip(desc_a, desc_b))}
    return {"swd": float(np.mean(list(values.values()))), **values}


def swd(images_a: torch.Tensor, images_b: torch.Tensor, seed: int = 0) -> dict:
    """SWD x1e3 between two equal-sized uint8 image sets (per level and average)."""
    assert images_a.shape == images_b.shape, (images_a.shape, images_b.shape)
    size = images_a.shape[-1]
    return swd_levels(descriptors(images_a, seed), descriptors(images_b, seed), size, seed)


@register("swd")
def swd_metric(ctx: MetricContext) -> dict:
    size = ctx.real().shape[-1]
    key = ("swd_real", ctx.n, ctx.seed)
    if key not in ctx.cache:
        real = descriptors(ctx.real(0), ctx.seed)
        floor = swd_levels(real, descriptors(ctx.real(1), ctx.seed), size, ctx.seed)
        ctx.cache[key] = (real, {k.replace("swd", "swd_floor"): v for k, v in floor.items()})
    real, floor = ctx.cache[key]
    return {**swd_levels(real, descriptors(ctx.fake(), ctx.seed), size, ctx.seed), **floor}
