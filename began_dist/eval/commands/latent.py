"""Latent-space tools: slerp, inversion of real images to z (the paper's method), interpolation rows,
the two ways from a real image to a latent (`latent_codec`), and the images the latent commands take.

Latent modes (`--latent`):
  encoder  vaegan: the posterior mean mu(x), decoded by G. BEGAN: D's encoder h = Enc(x),
           decoded by D's decoder (the auto-encoder's own latent space).
  invert   z_r with G(z_r) close to x: Adam on mean |x - G(z_r)| (BEGAN paper, section 4),
           decoded by G; z_r is kept in [-1, 1] where G's latents live there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from began_dist.data import DataError, sources
from began_dist.data.dataset import to_model_range

LATENT_MODES = ("encoder", "invert")
INVERT_STEPS = 300  # Adam steps of the z_r inversion


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of a and b at fractions t (falls back to lerp when parallel)."""
    a_unit, b_unit = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((a_unit * b_unit).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    t = t.view(-1, 1)
    so = torch.sin(omega)
    if bool((so.abs() < 1e-6).any()):
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


def interpolation_rows(starts: torch.Tensor, ends: torch.Tensor, steps: int) -> torch.Tensor:
    """(R, Nz) x (R, Nz) -> (R * steps, Nz): each row slerps from its start to its end."""
    t = torch.linspace(0, 1, steps, device=starts.device)
    return torch.cat([slerp(s.expand(steps, -1), e.expand(steps, -1), t) for s, e in zip(starts, ends)])


def invert(
    generator: torch.nn.Module,
    images: torch.Tensor,
    latent_size: int,
    steps: int = INVERT_STEPS,
    lr: float = 0.05,
    seed: int = 0,
    bound: Optional[float] = 1.0,
) -> torch.Tensor:
    """z_r with G(z_r) close to each image: Adam on mean |x - G(z_r)|, z kept in [-bound, bound] (paper, section 4)."""
    generator = generator.eval()
    start = torch.rand(images.shape[0], latent_size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    z = start.to(images.device).requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    requires_grad = [p.requires_grad for p in generator.parameters()]
    generator.requires_grad_(False)
    try:
        for _ in range(steps):
            # Sum over images of each one's mean error: every z gets its own image's gradient.
            loss = (generator(z) - images).abs().flatten(1).mean(1).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if bound is not None:
                with torch.no_grad():
                    z.clamp_(-bound, bound)
    finally:
        for p, flag in zip(generator.parameters(), requires_grad):
            p.requires_grad_(flag)
    return z.detach()


@dataclass
class LatentCodec:
    """Real images -> latents (`encode(images, seed)`) and latents -> images (`decode`), in one latent space."""

    mode: str
    encode: Callable[[torch.Tensor, int], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]


def latent_codec(family, mode: str, invert_steps: int = INVERT_STEPS) -> LatentCodec:
    if mode not in LATENT_MODES:
        raise ValueError(f"--latent {mode!r}: must be one of {', '.join(LATENT_MODES)}")
    if mode == "encoder" and hasattr(family, "encode"):
        return LatentCodec(mode, lambda images, seed=0: family.encode(images), family.decode)
    if mode == "encoder":  # BEGAN: D = Dec(Enc(x)); h = Enc(x) is its latent
        return LatentCodec(
            mode, lambda images, seed=0: _no_grad(family.D.encoder, images), lambda h: _no_grad(family.D.decoder, h)
        )
    bound = getattr(family, "latent_bound", 1.0)  # BEGAN's G was trained on U(-1, 1)

    def inverted(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
        return invert(family.G_sample, images, family.latent_size, steps=invert_steps, seed=seed, bound=bound)

    return LatentCodec(mode, inverted, lambda z: _no_grad(family.G_sample, z))


def _no_grad(network, tensor: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return network(tensor)


def glyph_font(cfg) -> tuple[str, int]:
    """The font the run's glyphs were drawn with: data.font, or a prepared glyph dataset's first font."""
    d = cfg.data
    if d.source == "shards":
        manifest = os.path.join(d.path, "manifest.json")
        fonts = None
        if os.path.isfile(manifest):
            with open(manifest) as handle:
                fonts = json.load(handle).get("fonts")
        if fonts:
            return fonts[0]["file"], int(fonts[0]["face"])
    if d.source == "glyphs":
        return d.font or sources.default_font(), d.font_index
    return sources.default_font(), 2  # the bundled Noto Sans CJK, Simplified Chinese face


def load_inputs(cfg, items: list[str], device: torch.device) -> torch.Tensor:
    """Each item an image file or one character rendered as the run's glyphs; (N, C, H, W) in [-1, 1]."""
    size, channels = cfg.model.image_size, cfg.model.channels
    images = []
    for item in items:
        if os.path.isfile(item):
            images.append(sources.load_image(item, size, channels))
        elif len(item) == 1:
            path, face = glyph_font(cfg)
            glyph = sources.render_glyphs(size, 1, path, face, chars=[item])[0][0]
            images.append(glyph if channels == 1 else glyph.repeat(channels, axis=-1))
        else:
            raise DataError(f"{item!r}: neither an image file nor one character")
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return to_model_range(batch, device)


def framed_interpolation(codec: LatentCodec, starts: torch.Tensor, ends: torch.Tensor, steps: int, seed: int = 0):
    """A row per image pair: start, `steps` decodes of slerp(z(start), z(end)), end; flattened for a grid.

    The decodes at both ends are the reconstructions, so each real image stands next to its own.
    """
    z_start, z_end = codec.encode(starts, seed), codec.encode(ends, seed + 1)
    path = codec.decode(interpolation_rows(z_start, z_end, steps)).view(len(starts), steps, *starts.shape[1:])
    return torch.cat([starts[:, None], path, ends[:, None]], dim=1).flatten(0, 1)
