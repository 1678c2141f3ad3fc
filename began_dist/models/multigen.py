"""Multi-generator BEGAN networks (docs/multigen.md, seed 000 in docs/design.md): one BEGAN decoder per component.

    G(z)     = [G_k(z_s, z_k)]_k, image compose(G(z), y)   z = cat(z_s, z_1 .. z_K), z_k of size z_sizes[k]
    D(x, y)  = compose([Dec_k(c_s, c_k)]_k, y), c = E(x) = cat(c_s, c_1 .. c_K), c_k of size z_sizes[k]
    compose(parts, y) = 2 sum_k y_k parts_k - 1     (composition=sum, the seed's)
                      = 2 max_{k: y_k = 1} parts_k - 1  (composition=max, how CRS images are drawn)

z_s (size `shared_z`, default 0: the seed's disjoint slices) is read by every generator: what
the components of one image share (on CRS the pose, size and width of square and cross) can
then be drawn once instead of twice independently.

Parts are "ink" maps (0 = background, 1 = full white), so a part is the component drawn
alone and the gated sum of parts is the image; `compose` maps ink to the model range
[-1, 1] (background -1). The encoder E and the decoders are the BEGAN ones (began.py);
D's code has one slice per generator, so L_z can compare the code of a fake with its z.
"""

from __future__ import annotations

import itertools
from typing import Optional

import torch
from torch import nn

from began_dist.models.began import Decoder, Encoder, glorot_init, network_args


def compose(parts: torch.Tensor, y: torch.Tensor, composition: str = "sum") -> torch.Tensor:
    """(N, K, C, H, W) ink parts gated by labels y (N, K) in {0, 1} -> (N, C, H, W) images in the model range.

    sum: parts add, so two half-inked parts make one full stroke. max: a pixel is as inked as its
    most inked on part, so a full stroke needs one part to draw it whole (overlaps cost nothing).
    """
    assert parts.ndim == 5 and y.shape == parts.shape[:2], (tuple(parts.shape), tuple(y.shape))
    gate = y.to(parts.dtype)[:, :, None, None, None]
    if composition == "sum":
        return 2 * (parts * gate).sum(1) - 1
    ink = parts.masked_fill(gate == 0, float("-inf")).amax(1)
    return 2 * torch.where(gate.amax(1) > 0, ink, torch.zeros_like(ink)) - 1  # no part on: background


def label_combinations(components: int) -> torch.Tensor:
    """Every non-empty y in {0, 1}^K, all components on first: (2^K - 1, K)."""
    return torch.tensor([y for y in itertools.product((0, 1), repeat=components) if any(y)][::-1])


def part_images(parts: torch.Tensor) -> torch.Tensor:
    """Ink parts (..., C, H, W) -> each drawn alone in the model range."""
    return 2 * parts - 1


class GatedDecoders(nn.Module):
    """K BEGAN decoders, decoder k reading slice k of the latent; `parts` stacks their outputs."""

    def __init__(self, z_sizes: list[int], decoder_args: dict, shared_z: int = 0, composition: str = "sum"):
        super().__init__()
        self.z_sizes, self.shared_z, self.composition = list(z_sizes), shared_z, composition
        self.decoders = nn.ModuleList(Decoder(latent=shared_z + size, **decoder_args) for size in self.z_sizes)

    def inputs(self, latent: torch.Tensor) -> list[torch.Tensor]:
        """(N, shared_z + sum z_sizes) -> each decoder's input cat(z_s, z_k)."""
        shared, *own = latent.split([self.shared_z, *self.z_sizes], dim=1)
        return [torch.cat([shared, z], dim=1) for z in own]

    def parts(self, latent: torch.Tensor) -> torch.Tensor:
        """(N, shared_z + sum z_sizes) -> (N, K, C, H, W) ink parts."""
        return torch.stack([decoder(z) for decoder, z in zip(self.decoders, self.inputs(latent))], dim=1)

    def compose(self, latent: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The gated sum; y = None switches every component on."""
        parts = self.parts(latent)
        return compose(parts, parts.new_ones(parts.shape[:2]) if y is None else y, self.composition)

    def set_carry(self, value: float) -> None:
        for decoder in self.decoders:
            decoder.set_carry(value)


class MultiGenerator(GatedDecoders):
    """G(z) -> the K parts [G_k(z_k)]; the image is `compose(G(z), y)` (one forward serves both)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.parts(z)


class MultiDiscriminator(nn.Module):
    """D(x, y) -> (reconstruction, code): a shared encoder, K gated sub-decoders on the code's slices."""

    def __init__(self, encoder: Encoder, decoders: GatedDecoders):
        super().__init__()
        self.encoder, self.decoders = encoder, decoders

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, with_parts: bool = False) -> tuple:
        """(reconstruction, code), and the sub-decoders' parts with `with_parts` (per-component equilibrium)."""
        code = self.encoder(x)
        parts = self.decoders.parts(code)
        recon = compose(parts, parts.new_ones(parts.shape[:2]) if y is None else y, self.decoders.composition)
        return (recon, code, parts) if with_parts else (recon, code)

    def set_carry(self, value: float) -> None:
        self.encoder.set_carry(value)
        self.decoders.set_carry(value)


def build_multigen(model) -> tuple[MultiGenerator, MultiDiscriminator]:
    """G and D from a `model` config section with `model.multigen.z_sizes` (and `shared_z`)."""
    mg = model.multigen
    layout = dict(z_sizes=list(mg.z_sizes), shared_z=int(mg.shared_z), composition=mg.composition)
    encoder_args, decoder_args = network_args(model)
    generator = MultiGenerator(decoder_args=decoder_args, **layout)
    latent = layout["shared_z"] + sum(layout["z_sizes"])
    encoder = Encoder(latent=latent, vanishing_residual=model.vanishing_residual, **encoder_args)
    discriminator = MultiDiscriminator(encoder, GatedDecoders(decoder_args=decoder_args, **layout))
    generator.apply(glorot_init)
    discriminator.apply(glorot_init)
    return generator, discriminator
