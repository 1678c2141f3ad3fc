"""recon: L1 reconstruction of held-out real images through D (BEGAN) or the family's encoder-decoder.

mean |x - D(x)| in the model's range [-1, 1], as the training loss L(x) but on
images the networks never saw. For glyphs these are the next characters after the
training set; sources without a natural held-out set fall back to training images
(`recon_heldout` = 0 says so). `recon_train` on the training sample shows the gap.
"""

from __future__ import annotations

import torch

from began_dist.data import sources
from began_dist.data.dataset import to_model_range
from began_dist.eval.metrics.registry import MetricContext, register

BATCH = 256


def heldout_images(cfg, count: int) -> torch.Tensor | None:
    """uint8 (count, C, H, W) images outside the training set, or None when the source has none."""
    d = cfg.data
    if d.source != "glyphs":
        return None
    trained = min(d.glyphs, d.limit) if d.limit else d.glyphs
    images, _ = sources.render_glyphs(cfg.model.image_size, trained + count, d.font, d.font_index)
    return torch.from_numpy(images[trained:]).permute(0, 3, 1, 2).contiguous()


def reconstruction_l1(family, images: torch.Tensor) -> float:
    """Mean |x - R(x)| over uint8 images, R = family.reconstruct (BEGAN: D; base.Family)."""
    total = 0.0
    with torch.no_grad():
        for chunk in images.split(BATCH):
            x = to_model_range(chunk, family.device)
            total += float((family.reconstruct(x) - x).abs().mean()) * len(chunk)
    return total / len(images)


@register("recon")
def recon_metric(ctx: MetricContext) -> dict:
    key = ("heldout", ctx.n)
    if key not in ctx.cache:
        ctx.cache[key] = heldout_images(ctx.cfg, ctx.n)
    heldout = ctx.cache[key]
    train = reconstruction_l1(ctx.family, ctx.real())
    return {
        "recon": reconstruction_l1(ctx.family, heldout) if heldout is not None else train,
        "recon_train": train,
        "recon_heldout": int(heldout is not None),
    }
