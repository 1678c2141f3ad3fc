import copy

import pytest
import torch

from began_dist.config import ModelConfig
from began_dist.models.began import (
    Decoder,
    Encoder,
    build_networks,
    count_parameters,
    glorot_init,
    num_scales,
    plain_upsample,
)


def model_config(**kw):
    return ModelConfig(**{"filters": 8, "nz": 8, "nh": 12, "convs_per_scale": 1, **kw})


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("arch", ["repeat", "skip"])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shapes(size, arch, channels):
    G, D = build_networks(model_config(image_size=size, arch=arch, channels=channels))
    z = torch.rand(2, 8) * 2 - 1
    fake = G(z)
    assert fake.shape == (2, channels, size, size)
    assert D.encoder(fake).shape == (2, 12)
    assert D(fake).shape == fake.shape


def spec_parameter_count(size, channels, n, nz, nh, r):
    """The paper's layer list (section 3.5), counted by hand: 3x3 convs with bias, FCs with bias."""
    conv = lambda cin, cout: 9 * cin * cout + cout  # noqa: E731
    scales = num_scales(size)
    encoder = conv(channels, n)
    for s in range(1, scales + 1):
        encoder += r * conv(s * n, s * n)
        if s < scales:
            encoder += conv(s * n, (s + 1) * n)
    encoder += 8 * 8 * scales * n * nh + nh
    decoder = lambda latent: latent * 64 * n + 64 * n + scales * r * conv(n, n) + conv(n, channels)  # noqa: E731
    return decoder(nz) + encoder + decoder(nh)


def test_parameter_count_128px_n128_matches_spec_layer_list():
    G, D = build_networks(ModelConfig(image_size=128, channels=3, filters=128, nz=64, nh=64, convs_per_scale=2))
    total = count_parameters(G) + count_parameters(D)
    assert total == spec_parameter_count(128, 3, 128, 64, 64, 2) == 28_772_678


def test_paper_17_3M_is_the_four_scale_layout():
    # The paper's ~17.3M matches our 64 px (4-scale) n = 128 model, stated in the README.
    G, D = build_networks(ModelConfig(image_size=64, channels=3, filters=128, nz=64, nh=64, convs_per_scale=2))
    assert count_parameters(G) + count_parameters(D) == spec_parameter_count(64, 3, 128, 64, 64, 2)
    assert abs(count_parameters(G) + count_parameters(D) - 17.3e6) < 0.1e6


def test_skip_adds_h0_channels_after_first_scale():
    repeat = Decoder(32, 1, 8, 8, 1, arch="repeat")
    skip = Decoder(32, 1, 8, 8, 1, arch="skip")
    assert [s.convs[0].in_channels for s in repeat.stacks] == [8, 8, 8]
    assert [s.convs[0].in_channels for s in skip.stacks] == [8, 16, 16]


def test_vanishing_residual_starts_as_identity_and_ends_as_plain_convs():
    torch.manual_seed(0)
    plain = Encoder(32, 1, 8, 8, 2, vanishing_residual=False)
    vanishing = Encoder(32, 1, 8, 8, 2, vanishing_residual=True)
    vanishing.load_state_dict(plain.state_dict())
    x = torch.randn(2, 8, 32, 32)
    stack = vanishing.stacks[0]
    vanishing.set_carry(1.0)
    assert torch.equal(stack(x, vanishing.carry), x)  # carry 1: same-shape convs pass their input through
    vanishing.set_carry(0.0)
    image = torch.randn(2, 1, 32, 32)
    assert torch.allclose(vanishing(image), plain(image))
    vanishing.set_carry(0.5)
    assert not torch.allclose(vanishing(image), plain(image))


def test_tanh_output_is_bounded():
    G, _ = build_networks(model_config(image_size=16, output="tanh"))
    out = G(torch.rand(4, 8) * 200 - 100)
    assert out.abs().max() <= 1.0


def test_linear_output_is_not_squashed():
    G, _ = build_networks(model_config(image_size=16))
    with torch.no_grad():
        G.to_image.bias.fill_(5.0)
    assert G(torch.zeros(1, 8)).min() > 1.0


@pytest.mark.parametrize("arch", ["repeat", "skip"])
@pytest.mark.parametrize("convs,residual", [(1, False), (2, True), (1, True)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_upsample_conv_is_the_papers_upsample_then_conv(arch, convs, residual, channels_last):
    """The transposed conv computes conv3x3(nearest_x2(x)) exactly: outputs and every weight's gradient
    agree to float64 rounding with the textbook order, for both archs, with the residual mid-carry."""
    torch.manual_seed(0)
    fused = Decoder(32, 1, 8, 5, convs, arch=arch, vanishing_residual=residual).double()
    fused.apply(glorot_init)
    fused.set_carry(0.4)
    if channels_last:
        fused.to(memory_format=torch.channels_last)
    plain = plain_upsample(copy.deepcopy(fused))
    assert fused.fused_upsample and not plain.fused_upsample
    z = torch.rand(3, 5, dtype=torch.float64) * 2 - 1
    a, b = fused(z), plain(z)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
