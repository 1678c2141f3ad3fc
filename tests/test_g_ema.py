"""train.g_ema_half_life: a moving average of G's weights that samples and metrics use.

It must not touch training (the paper's step, k_t and M), must move at the half-life it
names, must ride in checkpoints so a resumed run continues it bitwise, and must be what
`generate` (samples, metrics) and the latent commands draw from.
"""

import pytest
import torch
from test_loop import RESUME_KNOBS, assert_bitwise_equal, final_state, straight_and_resumed
from test_step_equivalence import tiny_config

from began_dist.config import ConfigError, load_config
from began_dist.families.began import BeganFamily


def tiny_family(half_life: float) -> BeganFamily:
    torch.manual_seed(0)
    return BeganFamily(tiny_config(g_ema_half_life=float(half_life)), torch.device("cpu"))


def test_the_average_moves_half_way_to_g_in_one_half_life():
    family = tiny_family(half_life=4)
    start = [p.clone() for p in family.G_ema.parameters()]
    with torch.no_grad():
        for p in family.G.parameters():
            p.add_(1.0)  # G jumps; the average should close half the gap every 4 updates
    for _ in range(4):
        family.update_g_ema()
    for before, after, target in zip(start, family.G_ema.parameters(), family.G.parameters()):
        torch.testing.assert_close(after - before, (target - before) / 2, rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in family.G_ema.parameters())


def test_generate_draws_from_the_average_and_off_means_g():
    family = tiny_family(half_life=10)
    with torch.no_grad():
        for p in family.G.parameters():
            p.mul_(1.5)  # G and its average now differ
    z = torch.rand(3, 8) * 2 - 1
    assert family.G_sample is family.G_ema
    torch.testing.assert_close(family.generate(z), family.G_ema(z))
    assert not torch.allclose(family.generate(z), family.G(z))
    off = tiny_family(half_life=0)
    assert off.G_ema is None and off.G_sample is off.G and "G_ema" not in off.state_dict()


def test_the_average_changes_no_training_and_resumes_bitwise(train_cli, tmp_path):
    code, plain = train_cli(*RESUME_KNOBS, "train.steps=10", run_dir=tmp_path / "plain")
    assert code == 0
    a, b, _ = straight_and_resumed(train_cli, tmp_path, [*RESUME_KNOBS, "train.g_ema_half_life=3"], 10)
    off = final_state(plain)
    assert_bitwise_equal(a["G_ema"], b["G_ema"], "G_ema")  # resume continues the average
    for key in ("G", "D", "opt_G", "opt_D", "k_t"):
        assert_bitwise_equal(a[key], off[key], key)  # training is BEGAN's, average or not
    assert "G_ema" not in off
    moved = [not torch.equal(x, y) for x, y in zip(a["G_ema"].values(), a["G"].values())]
    assert any(moved)  # the average lags G, so the comparisons above mean something


def test_a_checkpoint_without_an_average_starts_it_at_g():
    written = tiny_family(half_life=0)
    with torch.no_grad():
        for p in written.G.parameters():
            p.mul_(1.5)
    family = tiny_family(half_life=3)
    family.load_state_dict(written.state_dict())
    assert_bitwise_equal(family.G_ema.state_dict(), written.G.state_dict(), "G_ema")


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_bad_half_life_is_refused_naming_the_field(value):
    with pytest.raises(ConfigError, match="train.g_ema_half_life"):
        load_config(None, [f"train.g_ema_half_life={value}"])


def test_families_without_an_average_refuse_the_key():
    with pytest.raises(ConfigError, match="train.g_ema_half_life"):
        load_config(None, ["model.family=vaegan", "train.g_ema_half_life=100"])
