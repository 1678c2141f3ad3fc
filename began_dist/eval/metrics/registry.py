"""The metric registry and the context every metric reads (after stylegan2-ada's `metric_main`).

A metric is a function `(ctx: MetricContext) -> dict[str, float]` registered under its
name; its result holds the headline value under that name (e.g. "swd") and any
details beside it ("swd_32", "swd_floor", ...). The context gives each metric the
same seeded real sample, generated sample and held-out sample, and a cache shared
over the checkpoints of one evaluation, so real-side work is done once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import torch

from began_dist.images import to_uint8

Metric = Callable[["MetricContext"], dict]
REGISTRY: dict[str, Metric] = {}
PREREQUISITES: dict[str, Callable[[], object]] = {}  # metric -> a check that raises when its feature net is unusable
GENERATE_BATCH = 256  # images per generator forward when sampling


def register(name: str, prerequisite: Optional[Callable[[], object]] = None) -> Callable[[Metric], Metric]:
    def add(function: Metric) -> Metric:
        REGISTRY[name] = function
        if prerequisite is not None:
            PREREQUISITES[name] = prerequisite
        return function

    return add


def check_prerequisites(names: list[str]) -> None:
    """Raise now, before any training or sampling, if a metric's feature net is missing or refused:
    found only at the metric's turn, the error would throw away the run's evaluation work."""
    for name in names:
        if name in PREREQUISITES:
            PREREQUISITES[name]()


@dataclass
class MetricContext:
    """What one checkpoint's evaluation sees. Every random draw comes from `seed`, none from the global RNG."""

    cfg: object  # the run's resolved config
    family: object  # a model family with the checkpoint's weights (generate, D / reconstruct)
    dataset: object  # the run's training images (ImageDataset)
    step: int  # the checkpoint's step
    n: int  # images per set (capped at the dataset's size)
    seed: int = 0
    cache: dict = field(default_factory=dict)  # survives across checkpoints of one evaluation

    def __post_init__(self) -> None:
        self.n = min(self.n, len(self.dataset))
        self.n -= self.n % 2  # msssim pairs images

    def real(self, which: int = 0) -> torch.Tensor:
        """uint8 (n, C, H, W) training images: sample 0, or an independent sample 1 (disjoint when possible)."""
        key = ("real", which, self.n, self.seed)
        if key not in self.cache:
            count = len(self.dataset)
            order = torch.randperm(count, generator=torch.Generator().manual_seed(self.seed))
            if count < 2 * self.n and which:
                order = torch.randperm(count, generator=torch.Generator().manual_seed(self.seed + which))
                which = 0
            self.cache[key] = self.dataset.batch(order[which * self.n : (which + 1) * self.n])
        return self.cache[key]

    def fake(self) -> torch.Tensor:
        """uint8 (n, C, H, W) images G(z), z uniform in [-1, 1]^Nz, the same z for every checkpoint."""
        key = ("fake", id(self.family), self.step, self.n, self.seed)
        if key not in self.cache:
            z = torch.rand(self.n, self.family.latent_size, generator=torch.Generator().manual_seed(self.seed))
            batches = [to_uint8(self.family.generate(chunk * 2 - 1)) for chunk in z.split(GENERATE_BATCH)]
            for old in [k for k in self.cache if k[0] == "fake"]:  # one checkpoint's fakes at a time
                del self.cache[old]  # in place: the cache is shared with the next checkpoint's context
            self.cache[key] = torch.cat(batches)
        return self.cache[key]


def compute(name: str, ctx: MetricContext) -> dict:
    """One metric on one checkpoint: {"metric", "step", "n", "time_s", <values>}."""
    if name not in REGISTRY:
        raise KeyError(f"unknown metric {name!r}; available: {', '.join(sorted(REGISTRY))}")
    started = time.perf_counter()
    values = REGISTRY[name](ctx)
    return {"metric": name, "step": ctx.step, "n": ctx.n, "time_s": round(time.perf_counter() - started, 3), **values}


def as_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 [0, 255] with 3 channels (grayscale tiled, as ProGAN's metrics expect)."""
    assert image.dtype == torch.uint8 and image.ndim == 4, (image.dtype, tuple(image.shape))
    image = image.float()
    return image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image
