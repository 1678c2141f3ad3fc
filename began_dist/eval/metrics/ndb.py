"""NDB: the number of statistically different bins (Richardson & Weiss 2018), for mode dropping.

k-means (k-means++ start, Lloyd iterations, seeded) on real pixel vectors gives K
bins; a second sample is assigned to the nearest centre; each bin's share is
compared with the real share by a two-proportion z-test at significance 0.05.
Reported: `ndb` = NDB / K (fraction of different bins), `ndb_js` = Jensen-Shannon
divergence of the two histograms (nats), and the same for an independent real
sample (`ndb_real`, about 0.05 by construction of the test).
"""

from __future__ import annotations

import torch

from began_dist.eval.metrics.registry import MetricContext, register

MAX_BINS = 100
IMAGES_PER_BIN = 20  # fewer bins for small samples, so each bin can be tested
ITERATIONS = 25
Z_CRITICAL = 1.959964  # two-sided 0.05


def _pixels(images: torch.Tensor) -> torch.Tensor:
    return images.flatten(1).float() / 255.0


def kmeans(points: torch.Tensor, k: int, seed: int = 0, iterations: int = ITERATIONS) -> torch.Tensor:
    """(N, D) -> (k, D) centres: k-means++ seeding then Lloyd iterations; empty clusters keep their centre."""
    generator = torch.Generator().manual_seed(seed)
    centres = [points[torch.randint(len(points), (1,), generator=generator)].squeeze(0)]
    nearest = torch.cdist(points, centres[0][None]).squeeze(1).square()
    for _ in range(1, k):
        pick = torch.multinomial(nearest.clamp_min(0) + 1e-12, 1, generator=generator)
        centres.append(points[pick].squeeze(0))
        nearest = torch.minimum(nearest, torch.cdist(points, centres[-1][None]).squeeze(1).square())
    centres = torch.stack(centres)
    for _ in range(iterations):
        labels = assign(points, centres)
        sums = torch.zeros_like(centres).index_add_(0, labels, points)
        counts = torch.bincount(labels, minlength=k).float()[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return centres


def assign(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return torch.cdist(points, centres).argmin(dim=1)


def ndb_score(reference_bins: torch.Tensor, sample_bins: torch.Tensor, k: int) -> dict:
    """Fraction of the k bins whose sample share differs from the reference share (z-test), and JS divergence."""
    n_ref, n_sample = len(reference_bins), len(sample_bins)
    p_ref = torch.bincount(reference_bins, minlength=k).double() / n_ref
    p_sample = torch.bincount(sample_bins, minlength=k).double() / n_sample
    pooled = (p_ref * n_ref + p_sample * n_sample) / (n_ref + n_sample)
    se = (pooled * (1 - pooled) * (1 / n_ref + 1 / n_sample)).sqrt()
    z = (p_sample - p_ref) / se.clamp_min(1e-12)
    different = (z.abs() > Z_CRITICAL) & (se > 0)
    return {"ndb": float(different.double().mean()), "ndb_js": _js(p_ref, p_sample)}


def _js(p: torch.Tensor, q: torch.Tensor) -> float:
    m = (p + q) / 2

    def kl(a: torch.Tensor) -> float:
        mask = a > 0
        return float((a[mask] * (a[mask] / m[mask]).log()).sum())

    return 0.5 * kl(p) + 0.5 * kl(q)


def bins_for(n: int) -> int:
    return max(2, min(MAX_BINS, n // IMAGES_PER_BIN))


@register("ndb")
def ndb_metric(ctx: MetricContext) -> dict:
    k = bins_for(ctx.n)
    key = ("ndb_real", ctx.n, ctx.seed)
    if key not in ctx.cache:
        real = _pixels(ctx.real(0))
        centres = kmeans(real, k, ctx.seed)
        real_bins = assign(real, centres)
        floor = ndb_score(real_bins, assign(_pixels(ctx.real(1)), centres), k)
        ctx.cache[key] = (centres, real_bins, {"ndb_real": floor["ndb"], "ndb_js_real": floor["ndb_js"]})
    centres, real_bins, floor = ctx.cache[key]
    return {**ndb_score(real_bins, assign(_pixels(ctx.fake()), centres), k), "ndb_bins": k, **floor}
