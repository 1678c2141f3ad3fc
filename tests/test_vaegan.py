"""The VAE-GAN family: networks, losses, defaults, training, resume and a 2-worker Ray Train run."""

import math
import os

import pytest
import torch
from helpers import TINY
from test_loop import assert_bitwise_equal, final_state, stats_lines

from began_dist.cli import main
from began_dist.config import ConfigError, load_config
from began_dist.data import load_examples
from began_dist.data.dataset import to_model_range
from began_dist.eval.metrics.recon import reconstruction_l1
from began_dist.families.vaegan import feature_loss, kl_loss, uniform_to_normal
from began_dist.models.vaegan import build_vaegan
from began_dist.train import state as ckpt
from began_dist.train.runs import load_run

# TINY, with BEGAN's D bottleneck back at its default (model.nh means nothing for vaegan and is refused).
VAEGAN = [*TINY, "model.nh=64", "model.family=vaegan"]


@pytest.mark.parametrize("size", [32, 64])
def test_encoder_decoder_discriminator_shapes(size):
    cfg = load_config(None, ["model.family=vaegan", f"model.image_size={size}", "model.filters=8", "model.nz=12"])
    encoder, generator, discriminator = build_vaegan(cfg.model)
    x = torch.rand(3, 1, size, size) * 2 - 1
    mu, logvar = encoder(x)
    assert mu.shape == logvar.shape == (3, 12)
    image = generator(mu)
    assert image.shape == (3, 1, size, size) and image.abs().max() <= 1  # model.output=tanh, the family's default
    logits, features = discriminator(image)
    scales = int(math.log2(size // 8)) + 1
    assert logits.shape == (3,) and features.shape == (3, 8 * 8 * scales * 8)  # Dis_l: the last conv stack


def test_kl_and_feature_losses_match_hand_computed_values():
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # row 1: -1/2 [(1 + 0 - 1 - 1) + (1 + log 2 - 0 - 2)] = 1 - log(2) / 2; row 2: N(0, 1) itself, 0
    assert kl_loss(mu, logvar).item() == pytest.approx((1 - math.log(2) / 2) / 2)
    real, fake = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert feature_loss(real, fake).item() == pytest.approx((0.5 * 5 + 0.5 * 1) / 2)
    phi_1 = math.erf(1 / math.sqrt(2))  # P(|z| < 1) = 2 Phi(1) - 1: u = that maps to z = 1
    assert uniform_to_normal(torch.tensor([0.0, phi_1, -phi_1])).tolist() == pytest.approx([0.0, 1.0, -1.0], abs=1e-5)


def test_family_defaults_come_before_the_users_overrides(tmp_path):
    cfg = load_config(None, ["model.family=vaegan"])
    assert (cfg.train.lr, cfg.train.beta1, cfg.train.batch_size, cfg.model.nz) == (2e-4, 0.5, 64, 100)
    assert (cfg.train.vaegan.feature_weight, cfg.train.vaegan.g_steps) == (0.1, 2)
    cfg = load_config(None, ["model.family=vaegan", "train.batch_size=8", "train.lr=1e-3"])
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.beta1) == (8, 1e-3, 0.5)
    began = load_config(None, [])
    assert (began.train.lr, began.train.batch_size, began.model.nz) == (1e-4, 16, 64)  # BEGAN's own untouched


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["model.family=vaegan", "train.gamma=0.3"], "train.gamma"),
        (["model.family=vaegan", "model.nh=32"], "model.nh"),
        (["model.vaegan.tanh_z=true"], "model.vaegan.tanh_z"),
        (["model.family=vaegan", "train.vaegan.feature_weight=-1"], "train.vaegan.feature_weight"),
        (["model.family=vaegan", "train.vaegan.g_steps=0"], "train.vaegan.g_steps"),
    ],
)
def test_bad_config_is_refused_naming_the_field(tmp_path, capsys, overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_config(None, overrides)
    code = main(["train", *overrides, f"run.dir={tmp_path / 'run'}"])
    assert code == 2 and field in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_short_run_lowers_the_reconstruction_error_through_the_encoder(train_cli):
    code, run_dir = train_cli(
        *VAEGAN,
        "data.glyphs=8",
        "train.batch_size=8",
        "train.lr=1e-3",
        "train.steps=24",
        "train.log_every=6",
        "train.checkpoint_every=4",
        "run.checkpoints_to_keep=20",
    )
    assert code == 0
    lines = stats_lines(run_dir)
    assert [tuple(line) for line in lines][0][:3] == ("step", "L_pix", "L_kl")
    assert lines[-1]["L_pix"] < 0.8 * lines[0]["L_pix"]
    cfg, first, _ = load_run(run_dir, step=4)
    _, last, _ = load_run(run_dir)
    glyphs = load_examples(cfg, 8)
    assert reconstruction_l1(last, glyphs) < 0.8 * reconstruction_l1(first, glyphs)  # recon metric: G(mu(x))


def test_resume_is_bitwise_equal_to_a_straight_run(train_cli, tmp_path):
    code, straight = train_cli(*VAEGAN, "train.steps=8", run_dir=tmp_path / "straight")
    assert code == 0
    code, resumed = train_cli(*VAEGAN, "train.steps=4", "train.checkpoint_every=100", run_dir=tmp_path / "resumed")
    assert code == 0
    code, _ = train_cli("train.steps=8", run_dir=resumed, resume=True)
    assert code == 0
    a, b = final_state(straight), final_state(resumed)
    assert a["step"] == b["step"] == 8 and "k_t" not in a
    for key in ("E", "G", "D", "opt_E", "opt_G", "opt_D", "lr_state", "data", "rng", "fixed_z"):
        assert_bitwise_equal(a[key], b[key], key)
    first = ckpt.load_checkpoint(ckpt.checkpoint_path(straight, 4))
    assert not torch.equal(first["E"]["net.fc.weight"], a["E"]["net.fc.weight"])  # E trained: the check bites
    assert [line["step"] for line in stats_lines(resumed)] == [2, 4, 6, 8]


def test_tanh_z_keeps_latents_in_the_unit_box(train_cli):
    code, run_dir = train_cli(*VAEGAN, "model.vaegan.tanh_z=true", "train.steps=2")
    assert code == 0
    cfg, family, _ = load_run(run_dir)
    z = family.encode(to_model_range(load_examples(cfg, 8), family.device))
    assert z.abs().max() <= 1 and family.latent_bound == 1.0
    with open(os.path.join(run_dir, "config.yaml")) as handle:
        saved = handle.read()
    assert "tanh_z: true" in saved and "feature_weight: 0.1" in saved  # the family's defaults, stated


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_on_the_ray_cluster_match_one_worker(ray_cluster, tmp_path, train_cli):
    from test_ray_train import ON_TWO_NODES

    from began_dist.config import resolve_run_dir
    from began_dist.distributed.ray_train import run_on_ray

    common = [*VAEGAN, "train.batch_size=8", "train.steps=4", "train.log_every=1", "train.checkpoint_every=4"]
    cfg = load_config(None, [*common, *ON_TWO_NODES, f"run.dir={tmp_path / 'ray'}"])
    resolve_run_dir(cfg)
    result = run_on_ray(cfg)
    assert result.step == 4
    assert len(result.debug["replica_digests"]) == 2 and len(set(result.debug["replica_digests"])) == 1  # E, G, D agree
    assert len(set(result.debug["worker_nodes"])) == 2
    code, local = train_cli(*common, run_dir=tmp_path / "local")
    assert code == 0
    ray_lines, local_lines = stats_lines(tmp_path / "ray"), stats_lines(local)
    assert len(ray_lines) == len(local_lines) == 4
    for ray_line, local_line in zip(ray_lines, local_lines):  # 2 workers x 4 images = 1 worker x 8
        for key in ("L_pix", "L_kl", "L_feat", "L_D", "L_G"):
            assert ray_line[key] == pytest.approx(local_line[key], rel=1e-4, abs=1e-5), (ray_line["step"], key)
