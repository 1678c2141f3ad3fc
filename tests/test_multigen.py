"""The multigen family: networks, gated sum, combined k_t update, the loop (resume, shards, Ray), decompose."""

import copy
import json
import os

import pytest
import torch
from helpers import TINY
from test_loop import assert_bitwise_equal

from began_dist.cli import main
from began_dist.config import load_config, resolve_run_dir
from began_dist.eval.commands.decompose import real_parts
from began_dist.families.multigen import (
    MultigenFamily,
    code_moments,
    code_moments_split,
    latent_error,
    latent_error_split,
    reconstruction,
)
from began_dist.models.multigen import compose, label_combinations, part_images
from began_dist.train import state as ckpt

Z_SIZES = [2, 4]
MG_TINY = [o for o in TINY if not o.startswith(("model.nz", "model.nh"))] + [
    "model.family=multigen",
    "data.source=shapes",
    "data.limit=64",
    f"model.multigen.z_sizes=[{Z_SIZES[0]},{Z_SIZES[1]}]",
]
# k_t moves from the first steps only when gamma T(x_r) exceeds T(x_f): a small L_z weight and gamma 1.
K_MOVES = ["train.gamma=1.0", "train.lambda_k=0.05", "model.multigen.latent_weight=0.01"]


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are too small to gain from a second thread, and the machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_family(*overrides) -> MultigenFamily:
    torch.manual_seed(0)
    return MultigenFamily(load_config(None, [*MG_TINY, *overrides]), torch.device("cpu"))


def train(tmp_path, *overrides, name="run", resume=False):
    run_dir = str(tmp_path / name)
    args = (
        ["train", "--resume", run_dir, *overrides] if resume else ["train", *MG_TINY, f"run.dir={run_dir}", *overrides]
    )
    return main(args), run_dir


def assert_resume_is_bitwise(tmp_path, overrides, steps, keys=("G", "D", "opt_G", "opt_D", "k_t")):
    """A run of `steps`, and one stopped halfway and resumed, end with the same `keys` bit for bit:
    returns the straight run's directory and its last checkpoint."""
    code, straight = train(tmp_path, *overrides, f"train.steps={steps}", name="straight")
    assert code == 0
    half = ["train.checkpoint_every=100", f"train.steps={steps // 2}"]
    code, resumed = train(tmp_path, *overrides, *half, name="resumed")
    assert code == 0 and [s for s, _ in ckpt.list_checkpoints(resumed)] == [steps // 2]
    assert train(tmp_path, f"train.steps={steps}", name="resumed", resume=True)[0] == 0
    a, b = (ckpt.load_checkpoint(ckpt.latest_checkpoint(run)) for run in (straight, resumed))
    for key in keys:
        assert_bitwise_equal(a[key], b[key], key)
    return straight, a


def stats_lines(run_dir):
    with open(os.path.join(run_dir, "stats.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def test_shapes_of_every_output():
    family, n = tiny_family(), 3
    z, x = torch.rand(n, 6) * 2 - 1, torch.rand(n, 1, 16, 16) * 2 - 1
    y = torch.tensor([[1, 1], [0, 1], [1, 0]])
    assert family.latent_size == 6
    assert family.parts(z).shape == (n, 2, 1, 16, 16)
    assert family.generate(z, y).shape == family.generate(z).shape == (n, 1, 16, 16)
    reconstruction_, code = family.D(x, y.float())
    assert reconstruction_.shape == (n, 1, 16, 16) and code.shape == (n, 6)
    assert family.encode(x).shape == (n, 6)
    assert real_parts(family, ((x + 1) * 127.5).to(torch.uint8), y).shape == (n, 2, 1, 16, 16)
    panels = family.image_panels(x, torch.rand(6, 6) * 2 - 1, labels=y)
    assert {name: tuple(p.shape) for name, p in panels.items()} == {
        "G_fixed": (6, 1, 16, 16),
        "D_real": (n, 1, 16, 16),
        "D_fake": (6, 1, 16, 16),
    }
    assert label_combinations(2).tolist() == [[1, 1], [1, 0], [0, 1]]


def test_gated_sum_of_parts():
    parts = torch.rand(4, 2, 1, 5, 5)
    y = torch.tensor([[1, 1], [1, 0], [0, 1], [0, 0]])
    image = compose(parts, y)
    torch.testing.assert_close(image[0], 2 * (parts[0, 0] + parts[0, 1]) - 1)
    torch.testing.assert_close(image[1], part_images(parts[1, 0]))
    torch.testing.assert_close(image[2], part_images(parts[2, 1]))
    assert torch.equal(image[3], torch.full_like(image[3], -1.0))  # nothing on: background
    # D gates its sub-decoders the same way: switching a component off removes exactly its part.
    family = tiny_family()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        code = family.D.encoder(x)
        sub = family.D.decoders.parts(code)
        only_first, _ = family.D(x, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    torch.testing.assert_close(only_first, part_images(sub[:, 0]))


def test_max_composition_takes_the_most_inked_on_part_and_trains_through_it():
    parts = torch.tensor([0.2, 0.9, -0.5, 0.4]).view(1, 2, 1, 1, 2).repeat(4, 1, 1, 1, 1)  # part 0: .2 .9, 1: -.5 .4
    y = torch.tensor([[1, 1], [1, 0], [0, 1], [0, 0]])
    image = compose(parts, y, "max")
    expected = torch.tensor([[-0.6, 0.8], [-0.6, 0.8], [-2.0, -0.2], [-1.0, -1.0]])  # 2 max - 1; none on: -1
    torch.testing.assert_close(image.flatten(1), expected)
    parts.requires_grad_(True)
    compose(parts, y, "max")[0].sum().backward()
    assert parts.grad[0].flatten().tolist() == [2, 2, 0, 0]  # each pixel trains only its most inked part
    family = tiny_family("model.multigen.composition=max")
    z, y = torch.rand(3, family.latent_size) * 2 - 1, torch.tensor([[1, 1], [0, 1], [1, 0]])
    torch.testing.assert_close(family.generate(z, y), compose(family.parts(z), y.float(), "max"))
    with torch.no_grad():
        recon, code = family.D(torch.rand(3, 1, 16, 16), y.float())
    torch.testing.assert_close(recon, compose(family.D.decoders.parts(code), y.float(), "max"))


def test_loss_terms_by_hand():
    code, z = torch.tensor([[3.0, 4.0], [1.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert latent_error("l2", code, z).item() == pytest.approx(2.5)  # (||(3, 4)|| + 0) / 2
    assert latent_error("l1", code, z).item() == pytest.approx(7 / 4)
    assert latent_error("mse", code, z).item() == pytest.approx(25 / 4)
    moments = torch.tensor([[1.0, 2.0], [-1.0, 0.0]])  # means 0, 1; std sqrt(2), sqrt(2)
    expected = ((0 + abs(2**0.5 - 3**-0.5)) + (1 + abs(2**0.5 - 3**-0.5))) / 2
    assert code_moments(moments).item() == pytest.approx(expected)
    a, b = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, -1.0], [2.0, 0.0]]]])
    assert reconstruction("l1", a, b).item() == pytest.approx(1.0)
    assert reconstruction("l2", a, b).item() == pytest.approx(1.5)


def test_k_t_update_uses_the_combined_terms():
    """k_1 = clip(k_0 + lambda_k (gamma [L_rec(x_r) + L_z(dz_r)] - [L_rec(x_f) + L_z(dz_f)]), 0, 1), by hand."""
    family = tiny_family("train.gamma=0.7", "train.lambda_k=0.1", "model.multigen.latent_weight=0.5")
    family.k_t = torch.tensor(0.3)
    real = torch.rand(4, 1, 16, 16) * 2 - 1
    y = torch.tensor([[1, 1], [0, 1], [1, 1], [0, 1]])
    latents = torch.rand(2, 4, 6) * 2 - 1
    G_before, D_before = copy.deepcopy(family.G), copy.deepcopy(family.D)
    stats = family.train_step(real, latents, y)
    with torch.no_grad():
        recon, code = D_before(real, y.float())  # the D step saw the weights before it
        real_term = (recon - real).abs().mean() + 0.5 * code_moments(code)
        fake = compose(G_before(latents[1]), y)  # the G step: G before its step, D after its step
        recon, code = family.D(fake, y.float())
        fake_term = (recon - fake).abs().mean() + 0.5 * (code - latents[1]).norm(dim=1).mean()
    expected = min(max(0.3 + 0.1 * (0.7 * real_term.item() - fake_term.item()), 0.0), 1.0)
    assert stats["L_x"].item() == pytest.approx(real_term.item(), rel=1e-5)
    assert stats["L_Gz"].item() == pytest.approx(fake_term.item(), rel=1e-5)
    assert family.k_t.item() == pytest.approx(expected, rel=1e-5)
    assert stats["M"].item() == pytest.approx(real_term.item() + abs(0.7 * real_term.item() - fake_term.item()))
    assert family.k_t.item() != pytest.approx(0.3)  # the update did something


def test_the_splits_by_hand():
    """Each share sums to its whole term; the pieces are the slices' own errors."""
    code, z = torch.tensor([[3.0, 4.0, 0.0], [1.0, 2.0, 2.0]]), torch.zeros(2, 3)
    # l2: unit u of image i adds e_u^2 / ||e_i||: image 1 gives (9/5, 16/5 + 0), image 2 (1/3, 8/3)
    split = latent_error_split("l2", code, z, [1, 2])
    torch.testing.assert_close(split, torch.tensor([(9 / 5 + 1 / 3) / 2, (16 / 5 + 8 / 3) / 2]))
    torch.testing.assert_close(latent_error_split("mse", code, z, [1, 2]), torch.tensor([10 / 6, 24 / 6]))
    for kind in ("l1", "l2", "mse"):
        assert latent_error_split(kind, code, z, [2, 1]).sum().item() == pytest.approx(
            latent_error(kind, code, z).item()
        )
    moments = torch.tensor([[1.0, 2.0, 0.0], [-1.0, 0.0, 2.0]])  # unit errors: 0 + d, 1 + d, 1 + d
    d = abs(2**0.5 - 3**-0.5)
    torch.testing.assert_close(code_moments_split(moments, [1, 2]), torch.tensor([d / 3, (2 + 2 * d) / 3]))
    assert code_moments_split(moments, [1, 2]).sum().item() == pytest.approx(code_moments(moments).item())


def test_a_shared_slice_is_read_by_every_generator_and_charged_evenly():
    family = tiny_family("model.multigen.shared_z=3")
    assert family.latent_size == 3 + sum(Z_SIZES)
    z = torch.rand(2, family.latent_size) * 2 - 1
    moved_shared, moved_own = z.clone(), z.clone()
    moved_shared[:, :3] = -moved_shared[:, :3]
    moved_own[:, 3 : 3 + Z_SIZES[0]] = -moved_own[:, 3 : 3 + Z_SIZES[0]]  # generator 0's own slice
    parts, shared_parts, own_parts = (family.parts(latent) for latent in (z, moved_shared, moved_own))
    assert all((shared_parts[:, k] != parts[:, k]).any() for k in range(2))  # both read z_s
    assert (own_parts[:, 0] != parts[:, 0]).any() and torch.equal(own_parts[:, 1], parts[:, 1])
    # unit 0 is shared, unit 1 generator 0's, unit 2 generator 1's: each own share gets half the shared one
    code, zero = torch.tensor([[3.0, 4.0, 0.0], [1.0, 2.0, 2.0]]), torch.zeros(2, 3)
    split = latent_error_split("mse", code, zero, [1, 1], shared_z=1)  # per-unit errors 5/3, 10/3, 2/3
    torch.testing.assert_close(split, torch.tensor([10 / 3 + 5 / 6, 2 / 3 + 5 / 6]))
    assert split.sum().item() == pytest.approx(latent_error("mse", code, zero).item())
    moments = torch.tensor([[1.0, 2.0, 0.0], [-1.0, 0.0, 2.0]])  # unit errors: 0 + d, 1 + d, 1 + d
    d = abs(2**0.5 - 3**-0.5)
    torch.testing.assert_close(code_moments_split(moments, [1, 1], shared_z=1), torch.full((2,), (1 + 1.5 * d) / 3))


def test_a_shared_slice_run_resumes_and_decomposes_with_its_own_swap(tmp_path):
    shared = ["model.multigen.shared_z=2", "train.multigen.gammas=[1.0,0.5]", "model.multigen.diversity_weight=0.01"]
    straight, _ = assert_resume_is_bitwise(tmp_path, shared, steps=4)
    assert main(["decompose", straight]) == 0
    out = os.path.join(straight, "decompose", "step-00000004")
    assert "swap_shared.png" in os.listdir(out) and "swap_1.png" in os.listdir(out)


def test_per_component_k_update_by_hand():
    """k_k += lambda_k (gamma_k T_k(x_r) - T_k(x_f)), each pixel's error charged to the on parts by their ink."""
    family = tiny_family("train.multigen.gammas=[0.9,0.3]", "train.lambda_k=0.1", "model.multigen.latent_weight=0.5")
    family.k_t = torch.tensor([0.2, 0.6])
    real = torch.rand(4, 1, 16, 16) * 2 - 1
    y = torch.tensor([[1, 1], [0, 1], [1, 1], [0, 1]])
    latents = torch.rand(2, 4, 6) * 2 - 1
    G_before, D_before = copy.deepcopy(family.G), copy.deepcopy(family.D)
    stats = family.train_step(real, latents, y)

    def charged(D, x):
        """(cross, square) shares of mean |D(x) - x| with ink a_k = y_k (relu(part_k) + 1e-3), by hand."""
        with torch.no_grad():
            recon, code, parts = D(x, y.float(), with_parts=True)
        a = (parts.clamp_min(0) + 1e-3) * y[:, :, None, None, None]
        error = (recon - x).abs()
        first = (error * a[:, 0] / (a[:, 0] + a[:, 1])).mean()
        return torch.stack([first, error.mean() - first]), code

    real_rec, code = charged(D_before, real)
    # each unit's moments are its own: slice k's share is its units' mean error x (units in k) / 6
    real_terms = real_rec + 0.5 * torch.stack([code_moments(code[:, :2]) * 2 / 6, code_moments(code[:, 2:]) * 4 / 6])
    fake = compose(G_before(latents[1]).detach(), y)
    fake_rec, code = charged(family.D, fake)
    error = code - latents[1]
    norm = error.norm(dim=1, keepdim=True)
    fake_z = torch.stack([(error[:, :2].square() / norm).sum(1).mean(), (error[:, 2:].square() / norm).sum(1).mean()])
    fake_terms = fake_rec + 0.5 * fake_z
    gammas, before = torch.tensor([0.9, 0.3]), torch.tensor([0.2, 0.6])
    expected = (before + 0.1 * (gammas * real_terms - fake_terms)).clamp(0, 1)
    torch.testing.assert_close(family.k_t, expected, rtol=1e-5, atol=1e-6)
    assert stats["L_x"].item() == pytest.approx(real_terms.sum().item(), rel=1e-5)
    assert stats["M"].item() == pytest.approx(
        (real_terms.sum() + (gammas * real_terms - fake_terms).abs().sum()).item()
    )
    assert (stats["k_0"].item(), stats["k_1"].item()) == pytest.approx(expected.tolist())
    assert (family.k_t - before).abs().min() > 1e-4  # both moved, so the comparison means something


def test_equal_gammas_and_ks_make_the_step_one_k_makes():
    """The shares sum to the whole terms, so one gamma for all components is the plain BEGAN step."""
    one, per = tiny_family("train.gamma=0.6"), tiny_family("train.multigen.gammas=[0.6,0.6]")
    one.k_t, per.k_t = torch.tensor(0.4), torch.tensor([0.4, 0.4])
    real, y, latents = torch.rand(4, 1, 16, 16) * 2 - 1, torch.tensor([[1, 1], [0, 1]] * 2), torch.rand(2, 4, 6) * 2 - 1
    a, b = one.train_step(real, latents, y), per.train_step(real, latents, y)
    for key in ("L_x", "L_Gz", "L_D", "L_G", "M"):
        assert a[key].item() == pytest.approx(b[key].item(), rel=1e-5), key
    for p, q in zip(
        [*one.G.parameters(), *one.D.parameters()], [*per.G.parameters(), *per.D.parameters()], strict=True
    ):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    assert per.k_t[0].item() != pytest.approx(per.k_t[1].item())  # the two k_k differ after one step


def test_short_crs_run_losses_fall_and_decompose_writes_figures(tmp_path):
    steps = ["train.steps=60", "train.log_every=10", "train.checkpoint_every=60", "train.lr=5e-4"]
    code, run_dir = train(tmp_path, *steps, "train.batch_size=8")
    assert code == 0
    first, *_, before_last, last = stats_lines(run_dir)
    for key in ("L_x", "L_Gz"):  # the combined terms T(x_r) and T(x_f), over the last 20 steps against the first 10
        assert (before_last[key] + last[key]) / 2 < 0.85 * first[key], key
    assert main(["decompose", run_dir]) == 0
    out = os.path.join(run_dir, "decompose", "step-00000060")
    assert sorted(os.listdir(out)) == ["alone.png", "parts.png", "swap_0.png", "swap_1.png", "switch.png"]
    assert all(os.path.getsize(os.path.join(out, name)) > 100 for name in os.listdir(out))


def test_resume_is_bitwise_equal_to_a_straight_run(tmp_path):
    keys = ("G", "D", "opt_G", "opt_D", "k_t", "lr_state", "data", "rng", "fixed_z")
    _, a = assert_resume_is_bitwise(tmp_path, K_MOVES, steps=8, keys=keys)
    assert a["step"] == 8 and a["k_t"].item() > 0  # k_t moved, so the comparison means something


def test_per_component_ks_are_logged_and_resume_bitwise(tmp_path):
    per = ["train.multigen.gammas=[1.0,0.5]", "train.lambda_k=0.05", "model.multigen.latent_weight=0.01"]
    straight, a = assert_resume_is_bitwise(tmp_path, [*per, "train.log_every=3"], steps=6)
    last = stats_lines(straight)[-1]
    assert a["k_t"].shape == (2,) and (last["k_0"], last["k_1"]) == pytest.approx(a["k_t"].tolist())
    assert last["k_t"] == pytest.approx(a["k_t"].mean().item()) and last["k_0"] > 0


def test_trains_from_prepared_shapes_shards(tmp_path):
    out = tmp_path / "crs"
    assert main(["prepare", "shapes", str(out), "--size", "16", "--limit", "48", "--shards", "2"]) == 0
    code, run_dir = train(tmp_path, "data.source=shards", f"data.path={out / 'train'}", "train.steps=4")
    assert code == 0 and [s for s, _ in ckpt.list_checkpoints(run_dir)] == [4]
    with open(os.path.join(run_dir, "log.txt")) as handle:
        assert "48 images (shards)" in handle.read()


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["model.nz=8"], "model.nz"),
        (["model.nh=8"], "model.nh"),
        (["model.multigen.z_sizes=[4]"], "model.multigen.z_sizes"),  # CRS has two components
        (["model.multigen.latent_loss=l3"], "model.multigen.latent_loss"),
        (["model.multigen.shared_z=-1"], "model.multigen.shared_z"),
        (["model.multigen.composition=min"], "model.multigen.composition"),
        (["data.source=glyphs"], "data.source"),
        (["train.multigen.gammas=[0.5]"], "train.multigen.gammas"),  # one per generator
        (["train.multigen.gammas=[0.5,1.5]"], "train.multigen.gammas"),
        (["train.multigen.gammas=[0.5,0.5]", "train.gamma=0.7"], "train.gamma"),
    ],
)
def test_bad_config_is_refused_naming_the_field(tmp_path, capsys, overrides, field):
    code, run_dir = train(tmp_path, *overrides)
    assert code == 2
    assert field in capsys.readouterr().err
    assert not os.path.exists(os.path.join(run_dir, "checkpoints"))


def test_multigen_keys_are_refused_for_began(capsys):
    assert main(["train", *TINY, "model.multigen.z_sizes=[4,4]"]) == 2
    assert "model.multigen" in capsys.readouterr().err
    assert main(["train", *TINY, "train.multigen.gammas=[0.5,0.5]"]) == 2
    assert "train.multigen.gammas" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_on_the_shared_cluster_equal_one_worker(ray_cluster, tmp_path):
    """Labels are sliced per rank as the images are, and the batch statistics (real-code moments, mode seeking)
    are the global batch's: 2 workers x 8 make the step 1 worker x 16 makes."""
    from began_dist.distributed.ray_train import run_on_ray

    extras = [  # our recipe's options (configs/multigen_crs_shared_max.yaml) and mode seeking
        "model.multigen.real_recon_weight=1",
        "model.multigen.diversity_weight=0.01",
        "model.multigen.shared_z=2",
        "model.multigen.composition=max",
    ]
    common = [
        *K_MOVES,
        *extras,
        "train.batch_size=16",
        "train.steps=4",
        "train.log_every=1",
        "train.checkpoint_every=4",
    ]
    cfg = load_config(
        None,
        [
            *MG_TINY,
            *common,
            "run.workers=2",
            "run.worker_resources.train_slot=1",
            "run.controller_failure_limit=1",
            f"run.dir={tmp_path / 'ray'}",
        ],
    )
    resolve_run_dir(cfg)
    result = run_on_ray(cfg)
    assert result.step == 4
    assert len(result.debug["replica_digests"]) == 2 and len(set(result.debug["replica_digests"])) == 1
    assert len(set(result.debug["worker_nodes"])) == 2
    code, local = train(tmp_path, *common, name="local")
    assert code == 0
    for ray_line, local_line in zip(stats_lines(tmp_path / "ray"), stats_lines(local), strict=True):
        for key in ("L_x", "L_Gz", "L_D", "L_G", "k_t", "M"):
            assert ray_line[key] == pytest.approx(local_line[key], rel=1e-4, abs=1e-6), (ray_line["step"], key)


def test_the_harder_four_shape_set_in_memory_and_as_shards(tmp_path):
    out = tmp_path / "four"
    assert main(["prepare", "shapes4", str(out), "--size", "16", "--limit", "24"]) == 0
    from began_dist.data.reader import ShardedDataset

    train_split, heldout = ShardedDataset(str(out / "train")), ShardedDataset(str(out / "heldout"))
    assert train_split.labels.shape == (24, 4) and heldout.labels.tolist() == [[1, 0, 0, 0]] * 24
    assert [1, 0, 0, 0] not in train_split.labels.tolist() and set(train_split.labels.sum(1).tolist()) == {1, 2, 3}
    masks = train_split.label_batch("masks", torch.arange(24))
    assert masks.shape == (24, 4, 16, 16) and ((masks.flatten(2).amax(2) > 0) == train_split.labels.bool()).all()
    four = ["data.shapes=four", "data.limit=32", "model.multigen.z_sizes=[2,2,2,2]", "train.steps=2"]
    code, run_dir = train(tmp_path, *four)
    assert code == 0 and main(["decompose", run_dir]) == 0
    assert os.path.isfile(os.path.join(run_dir, "decompose", "step-00000002", "swap_3.png"))


def test_sample_points_a_multigen_run_to_decompose(tmp_path, capsys):
    code, run_dir = train(tmp_path, "train.steps=2")
    assert code == 0 and main(["sample", run_dir]) == 2
    assert "decompose" in capsys.readouterr().err
