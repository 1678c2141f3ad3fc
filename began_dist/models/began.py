"""BEGAN networks (Berthelot, Schumm & Metz 2017), as the paper's section 3.5 lays them out.

Every conv is 3x3 + ELU, no normalisation, no transposed convs, an 8x8
bottleneck, so a size H has log2(H / 8) + 1 scales.

    Generator G(z)      = Decoder(z)                       z: Nz
    Discriminator D(x)  = Decoder(Encoder(x))              h: Nh (an auto-encoder)
    Encoder: conv(n); per scale s: r x conv(s*n), then (s < S) stride-2 conv to (s+1)*n; FC -> Nh
    Decoder: FC -> 8x8xn (= h0); per scale: r x conv(n), then (s < S) nearest x2 upsample; conv -> C

`arch="skip"` concatenates h0, upsampled, to the input of every decoder scale after
the first (the paper's skip connections; 1Konny/BEGAN-pytorch's skip_repeat, docs/design.md). The optional
vanishing residual mixes each same-shape conv as carry * in + (1 - carry) * out,
carry falling from 1 to 0 over the first `residual_steps` steps (`set_carry`).

The conv after each nearest x2 upsample runs as one stride-2 transposed conv on the
input before upsampling (`upsample_conv`): the same function, with 4 x 4 = 16 instead of
(2 x 2) x 9 = 36 multiply-adds per input pixel and channel pair (docs/performance.md,
"Upsample and conv as one op"). The weights stay the paper's 3 x 3 convs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BOTTLENECK = 8  # spatial size of the innermost feature map, pixels


def num_scales(image_size: int) -> int:
    scales = int(math.log2(image_size // BOTTLENECK)) + 1
    assert BOTTLENECK * 2 ** (scales - 1) == image_size, f"image_size {image_size} is not 8 x a power of two"
    return scales


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


def _fold(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """3 taps (offsets -1, 0, +1) -> the 4 taps of a stride-2 transposed conv that reads the un-upsampled input.

    Along one axis, output pixel 2i + a of conv3x3(nearest_x2(x)) reads x[i - 1 + a] with the
    taps that land on it and x[i + a] with the others: a = 0 takes (w[-1]) and (w[0] + w[+1]),
    a = 1 takes (w[-1] + w[0]) and (w[+1]). Written as the transposed conv's kernel (stride 2,
    padding 1): [w[+1], w[0] + w[+1], w[-1] + w[0], w[-1]]. Sums, not a matmul, so autocast
    leaves them in the weights' precision.
    """
    before, centre, after = weight.unbind(dim)
    return torch.stack([after, centre + after, before + centre, before], dim)


def upsample_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """conv(nearest_x2(x)) for a 3x3, padding-1 conv, without materialising the upsampled input."""
    kernel = _fold(_fold(conv.weight, 2), 3).transpose(0, 1)  # (C_in, C_out, 4, 4), as conv_transpose2d wants
    return F.conv_transpose2d(x, kernel, conv.bias, stride=2, padding=1)


def upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class ConvStack(nn.Module):
    """r x [conv3x3 + ELU] at one scale, optionally as vanishing residuals."""

    def __init__(self, in_channels: int, out_channels: int, convs: int, vanishing_residual: bool):
        super().__init__()
        widths = [in_channels] + [out_channels] * convs
        self.convs = nn.ModuleList(conv3x3(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.vanishing_residual = vanishing_residual

    def forward(self, x: torch.Tensor, carry: torch.Tensor, upsampled: bool = False) -> torch.Tensor:
        """upsampled: the stack's input is nearest_x2(x); its first conv reads x through `upsample_conv`."""
        for i, conv in enumerate(self.convs):
            fused = upsampled and i == 0
            # In place: conv's backward needs its input and ELU's its result, so no activation is kept twice
            # (a third less step memory at 64 px; docs/performance.md, "Always").
            out = F.elu(upsample_conv(x, conv) if fused else conv(x), inplace=True)
            if fused and self.vanishing_residual and out.shape[1] == x.shape[1]:
                x = upsample(x)  # the residual's carry term is the upsampled input itself
            # The residual only bridges convs whose input and output shapes agree.
            x = carry * x + (1 - carry) * out if self.vanishing_residual and out.shape == x.shape else out
        return x


class CarryMixin(nn.Module):
    """Holds the vanishing-residual carry as a device buffer (not saved: it follows the step)."""

    def _init_carry(self) -> None:
        self.register_buffer("carry", torch.ones(()), persistent=False)

    @torch.no_grad()
    def set_carry(self, value: float) -> None:
        self.carry.fill_(value)


class Encoder(CarryMixin):
    def __init__(self, image_size, channels, filters, latent, convs_per_scale, vanishing_residual=False):
        super().__init__()
        self._init_carry()
        self.scales = num_scales(image_size)
        n = filters
        self.from_image = conv3x3(channels, n)
        self.stacks = nn.ModuleList(
            ConvStack(s * n, s * n, convs_per_scale, vanishing_residual) for s in range(1, self.scales + 1)
        )
        self.downs = nn.ModuleList(conv3x3(s * n, (s + 1) * n, stride=2) for s in range(1, self.scales))
        self.fc = nn.Linear(BOTTLENECK * BOTTLENECK * self.scales * n, latent)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last conv stack's output (N, 8 x 8 x S n), flattened: what the FC layer reads."""
        x = F.elu(self.from_image(x), inplace=True)
        for s, stack in enumerate(self.stacks):
            x = stack(x, self.carry)
            if s < len(self.downs):
                x = F.elu(self.downs[s](x), inplace=True)
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _layout_of(weight: torch.Tensor) -> torch.memory_format:
    """channels_last if a conv weight is stored so (`memory_format_for`), else NCHW."""
    channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


class Decoder(CarryMixin):
    def __init__(
        self,
        image_size,
        channels,
        filters,
        latent,
        convs_per_scale,
        arch="repeat",
        vanishing_residual=False,
        output="linear",
    ):
        super().__init__()
        self._init_carry()
        self.filters, self.skip, self.tanh = filters, arch == "skip", output == "tanh"
        # False: upsample, then conv, as a textbook port does (benchmarks/reference_step.py's yardstick)
        self.fused_upsample = True
        n = filters
        scales = num_scales(image_size)
        self.fc = nn.Linear(latent, BOTTLENECK * BOTTLENECK * n)
        in_widths = [n] + [2 * n if self.skip else n] * (scales - 1)
        self.stacks = nn.ModuleList(ConvStack(w, n, convs_per_scale, vanishing_residual) for w in in_widths)
        self.to_image = conv3x3(n, channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h0 = self.fc(z).view(-1, self.filters, BOTTLENECK, BOTTLENECK)
        # h0 in the convs' layout: with channels_last weights an NCHW h0 made every skip concat
        # NCHW, and each conv reordered it forward and backward (docs/performance.md)
        x = h0 = h0.contiguous(memory_format=_layout_of(self.to_image.weight))
        for s, stack in enumerate(self.stacks):
            if s > 0:
                # cat(up(x), up(h0_s)) = up(cat(x, h0_{s-1})): concatenate before upsampling
                if self.skip:
                    x = torch.cat([x, F.interpolate(h0, size=x.shape[-2:], mode="nearest")], dim=1)
                if not self.fused_upsample:
                    x = upsample(x)
            x = stack(x, self.carry, upsampled=s > 0 and self.fused_upsample)
        x = self.to_image(x)
        return torch.tanh(x) if self.tanh else x


class Generator(Decoder):
    """G(z): a decoder from the Nz-dimensional latent, with its own weights."""


class Discriminator(nn.Module):
    """D(x) = Dec(Enc(x)): BEGAN's auto-encoder discriminator."""

    def __init__(self, encoder: Encoder, decoder: Decoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def set_carry(self, value: float) -> None:
        self.encoder.set_carry(value)
        self.decoder.set_carry(value)


def plain_upsample(module: nn.Module) -> nn.Module:
    """Every decoder in `module` upsamples, then convs (the textbook order; same function, more FLOPs)."""
    for m in module.modules():
        if isinstance(m, Decoder):
            m.fused_upsample = False
    return module


def network_args(model) -> tuple[dict, dict]:
    """(arguments every network takes, a decoder's arguments) from a `model` config section."""
    m = model
    shared = dict(image_size=m.image_size, channels=m.channels, filters=m.filters, convs_per_scale=m.convs_per_scale)
    return shared, dict(shared, arch=m.arch, vanishing_residual=m.vanishing_residual, output=m.output)


def build_networks(model) -> tuple[Generator, Discriminator]:
    """G and D from a `model` config section."""
    m = model
    shared, decoder_args = network_args(m)
    generator = Generator(latent=m.nz, **decoder_args)
    encoder = Encoder(latent=m.nh, vanishing_residual=m.vanishing_residual, **shared)
    discriminator = Discriminator(encoder, Decoder(latent=m.nh, **decoder_args))
    generator.apply(glorot_init)
    discriminator.apply(glorot_init)
    return generator, discriminator


def glorot_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases, as the TensorFlow BEGANs (slim's defaults).

    PyTorch's default init (uniform with variance 1 / (3 fan_in), non-zero biases) shrinks
    the signal at every layer: at 32 px, n = 32 its G(z) varies across z by ~5 % of its
    magnitude and training starts collapsed; with Glorot it varies by ~100 %.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
