"""MS-SSIM diversity: mean MS-SSIM over pairs of generated images (lower = more diverse).

A port of ProGAN's `metrics/ms_ssim.py`: pairs are images[0::2] vs images[1::2];
5 scales with the standard weights, 2x2 box downsampling between them; an 11-tap
Gaussian window (sigma 1.5) that shrinks to the image size at coarse scales (its
sigma scaled with it), so 16-64 px images work; 'valid' filtering; negative
values clipped to 0. Real pairs give the reference (`msssim_real`): a generator
as diverse as the data scores about the same, a collapsed one scores higher.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from began_dist.eval.metrics.registry import MetricContext, register

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MAX_VAL, FILTER_SIZE, FILTER_SIGMA, K1, K2 = 255.0, 11, 1.5, 0.01, 0.03
BATCH = 512  # pairs per pass


def gaussian_taps(size: int, sigma: float) -> torch.Tensor:
    """1-D taps of ProGAN's _FSpecialGauss (half-pixel offset when size is even); outer(t, t) is its window."""
    radius = size // 2
    offset, start, stop = (0.5, -radius, radius) if size % 2 == 0 else (0.0, -radius, radius + 1)
    coords = np.arange(start, stop, dtype=np.float64) + offset
    taps = np.exp(-(coords**2) / (2.0 * sigma**2))
    return torch.from_numpy(taps / taps.sum())


def _ssim_and_cs(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair SSIM and contrast-structure term at one scale; (N, C, H, W) float64 in [0, 255]."""
    size = min(FILTER_SIZE, *a.shape[-2:])
    taps = gaussian_taps(size, size * FILTER_SIGMA / FILTER_SIZE)
    # The Gaussian window is separable: two 1-D 'valid' passes over all five maps at once.
    maps = torch.stack([a, b, a * a, b * b, a * b], dim=2).flatten(0, 2)[:, None]
    maps = F.conv2d(F.conv2d(maps, taps.view(1, 1, size, 1)), taps.view(1, 1, 1, size))
    mu_a, mu_b, mean_aa, mean_bb, mean_ab = maps.view(*a.shape[:2], 5, *maps.shape[-2:]).unbind(2)
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a, var_b, cov = mean_aa - mu_aa, mean_bb - mu_bb, mean_ab - mu_ab
    c1, c2 = (K1 * MAX_VAL) ** 2, (K2 * MAX_VAL) ** 2
    v1, v2 = 2.0 * cov + c2, var_a + var_b + c2
    ssim = ((2.0 * mu_ab + c1) * v1 / ((mu_aa + mu_bb + c1) * v2)).mean(dim=(1, 2, 3))
    return ssim, (v1 / v2).mean(dim=(1, 2, 3))


def _box_down(x: torch.Tensor) -> torch.Tensor:
    return (x[:, :, 0::2, 0::2] + x[:, :, 1::2, 0::2] + x[:, :, 0::2, 1::2] + x[:, :, 1::2, 1::2]) * 0.25


def ms_ssim_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MS-SSIM of each pair (a[i], b[i]) of uint8 (N, C, H, W) images -> (N,) in [0, 1]."""
    assert a.shape == b.shape, (a.shape, b.shape)
    # Grayscale stays one channel: tiling it to three (as ProGAN does) leaves every mean unchanged.
    a, b = a.double(), b.double()
    ssims, css = [], []
    for _ in WEIGHTS:
        ssim, cs = _ssim_and_cs(a, b)
        ssims.append(ssim.clamp_min(0))
        css.append(cs.clamp_min(0))
        a, b = _box_down(a), _box_down(b)
    weights = torch.tensor(WEIGHTS, dtype=torch.float64)
    product = torch.stack(css[:-1]).pow(weights[:-1, None]).prod(dim=0)
    return (product * ssims[-1].pow(weights[-1])).float()


def mean_ms_ssim(images: torch.Tensor) -> float:
    """Mean MS-SSIM over consecutive pairs images[0::2] vs images[1::2] (an even count)."""
    assert images.shape[0] % 2 == 0 and images.shape[0] >= 2, images.shape
    scores = [ms_ssim_pairs(chunk[0::2], chunk[1::2]) for chunk in images.split(2 * BATCH)]
    return float(torch.cat(scores).mean())


@register("msssim")
def msssim_metric(ctx: MetricContext) -> dict:
    key = ("msssim_real", ctx.n, ctx.seed)
    if key not in ctx.cache:
        ctx.cache[key] = mean_ms_ssim(ctx.real())
    return {"msssim": mean_ms_ssim(ctx.fake()), "msssim_real": ctx.cache[key]}
