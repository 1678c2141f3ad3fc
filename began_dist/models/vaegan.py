"""VAE-GAN networks (Larsen et al. 2016, arXiv 1512.09300) built from BEGAN's blocks.

    E(x)   -> (mu, log sigma^2)   BEGAN's Encoder with a 2 Nz FC head
    G(z)   -> x                   BEGAN's Generator (decoder) from Nz
    D(x)   -> (logit, l)          BEGAN's Encoder trunk; l = its last conv stack
                                  (8 x 8 x S n, flattened) is the learned feature layer
                                  Dis_l, a 1-unit FC on l gives the real/fake logit

Reusing BEGAN's 3x3 + ELU scales (no normalisation) keeps one set of building
blocks, and without batch statistics every rank's step stays a plain sum of
per-image terms (the data-parallelism rule holds as for BEGAN).
"""

from __future__ import annotations

import torch
from torch import nn

from began_dist.models.began import Encoder, Generator, glorot_init


class VaeEncoder(nn.Module):
    """E(x) = (mu, log sigma^2) of q(z | x), each (N, Nz)."""

    def __init__(self, image_size, channels, filters, latent, convs_per_scale):
        super().__init__()
        self.latent = latent
        self.net = Encoder(image_size, channels, filters, 2 * latent, convs_per_scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(x).split(self.latent, dim=1)
        return mu, logvar


class FeatureDiscriminator(nn.Module):
    """Dis(x) = (logit (N,), Dis_l(x) (N, F)): one conv trunk serves the GAN loss and the feature loss."""

    def __init__(self, image_size, channels, filters, convs_per_scale):
        super().__init__()
        self.net = Encoder(image_size, channels, filters, 1, convs_per_scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.features(x)
        return self.net.fc(features).squeeze(1), features


def build_vaegan(model) -> tuple[VaeEncoder, Generator, FeatureDiscriminator]:
    """E, G and D from a `model` config section (model.filters, model.nz, model.arch, model.output)."""
    m = model
    shared = dict(image_size=m.image_size, channels=m.channels, filters=m.filters, convs_per_scale=m.convs_per_scale)
    encoder = VaeEncoder(latent=m.nz, **shared)
    generator = Generator(latent=m.nz, arch=m.arch, output=m.output, **shared)
    discriminator = FeatureDiscriminator(**shared)
    for network in (encoder, generator, discriminator):
        network.apply(glorot_init)
    return encoder, generator, discriminator
