"""Our fast step computes the plain step's math: same losses, k_t and Adam updates.

The yardstick is benchmarks/reference_step.py (a public port's step, eager fp32 NCHW);
every speed option (channels_last, train.compile, reduced precision on GPU) is checked
against the plain fp32 step from the same weights and batch. Smallest models only.

BEGAN_TEST_DEVICE=cuda runs the fp32, channels_last and compile checks on a GPU too
(`benchmarks/gpu_check.py`); fp32 there means TF32 off, as the reference step is plain fp32.
"""

import copy
import logging
import os

import pytest
import torch
from omegaconf import OmegaConf

from began_dist.config import Config, ConfigError, load_config
from began_dist.families import began
from began_dist.families.began import BeganFamily, ScaleGrad
from began_dist.models.began import plain_upsample
from began_dist.train.preflight import train_config
from benchmarks.reference_step import reference_step  # the repo root is on pytest's pythonpath (pyproject.toml)

LOSSES = ("L_x", "L_Gz", "L_D", "L_G", "k_t")
BATCH, NZ, SIZE = 4, 8, 16
DEVICE = os.environ.get("BEGAN_TEST_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def _no_tf32(monkeypatch):
    """fp32 convs really in fp32 on Ampere+ GPUs (cuDNN's default TF32 keeps 10 mantissa bits;
    matmuls are already fp32 by default)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def tiny_config(order="alternating", arch="repeat", residual=False, **train):
    cfg = OmegaConf.structured(Config)
    m = cfg.model
    m.image_size, m.filters, m.nz, m.nh, m.convs_per_scale, m.arch = SIZE, 8, NZ, NZ, 1, arch
    m.vanishing_residual, m.residual_steps = residual, 10
    cfg.train.update_order, cfg.train.batch_size = order, BATCH
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def make_family(cfg, device=DEVICE, k_t=0.3, memory_format=None) -> BeganFamily:
    torch.manual_seed(0)  # the same initial weights for every family built here
    family = BeganFamily(cfg, torch.device(device))
    family.set_step(4)  # carry 0.6 when the vanishing residual is on
    family.k_t = torch.tensor(k_t, device=device)
    if memory_format is not None:
        family.memory_format = memory_format
        for net in (family.G, family.D):
            net.to(memory_format=memory_format)
    return family


def batch(device=DEVICE):
    generator = torch.Generator().manual_seed(1)
    real = torch.rand(BATCH, 1, SIZE, SIZE, generator=generator) * 2 - 1
    z = torch.rand(2, BATCH, NZ, generator=generator) * 2 - 1
    return real.to(device), z.to(device)


def our_step(family: BeganFamily, real, z) -> dict:
    stats = family.train_step(real, z[: family.latents_per_step])
    return {key: stats[key] for key in LOSSES}


def assert_same_step(a_stats, a_nets, b_stats, b_nets, loss_rtol=1e-5, param_rtol=1e-4):
    for key in LOSSES:
        torch.testing.assert_close(a_stats[key].cpu(), b_stats[key].cpu(), rtol=loss_rtol, atol=1e-7, msg=key)
    for a_net, b_net in zip(a_nets, b_nets):
        for (name, p), q in zip(a_net.named_parameters(), b_net.parameters()):
            # atol: 1 % of one Adam step (lr 1e-4), for parameters that sit near zero
            torch.testing.assert_close(p.cpu(), q.cpu(), rtol=param_rtol, atol=1e-6, msg=name)


@pytest.mark.parametrize("order", ["alternating", "simultaneous"])
@pytest.mark.parametrize("arch,residual,k_t", [("repeat", False, 0.3), ("skip", True, 0.3), ("repeat", False, 0.0)])
def test_our_step_matches_the_reference_step(order, arch, residual, k_t):
    family = make_family(tiny_config(order, arch, residual), k_t=k_t)
    # The reference as a plain port writes it: NCHW, upsample then conv
    G = plain_upsample(copy.deepcopy(family.G).to(memory_format=torch.contiguous_format))
    D = plain_upsample(copy.deepcopy(family.D).to(memory_format=torch.contiguous_format))
    opt_G = torch.optim.Adam(G.parameters(), lr=family.opt_G.defaults["lr"], betas=family.opt_G.defaults["betas"])
    opt_D = torch.optim.Adam(D.parameters(), lr=family.opt_D.defaults["lr"], betas=family.opt_D.defaults["betas"])
    real, z = batch()
    before = [p.detach().clone() for p in D.parameters()]
    ref = reference_step(
        G, D, opt_G, opt_D, torch.tensor(k_t, device=DEVICE), real, z[0], z[1], family.gamma, family.lambda_k, order
    )
    ours = our_step(family, real, z)
    assert ref["k_t"].item() != k_t or k_t == 0.0  # k_t moved
    assert all(not torch.equal(p, q) for p, q in zip(before, D.parameters()))  # every D weight stepped
    assert_same_step(ref, (G, D), ours, (family.G, family.D))


@pytest.mark.parametrize("order", ["alternating", "simultaneous"])
def test_channels_last_matches_plain_nchw(order):
    fast = make_family(tiny_config(order), memory_format=torch.channels_last)
    plain = make_family(tiny_config(order), memory_format=torch.contiguous_format)
    assert fast.G.to_image.weight.is_contiguous(memory_format=torch.channels_last)
    real, z = batch()
    for _ in range(2):  # the second step runs on Adam's moments
        a, b = our_step(fast, real, z), our_step(plain, real, z)
    assert_same_step(a, (fast.G, fast.D), b, (plain.G, plain.D))


def test_memory_format_is_channels_last_where_measured_faster():
    assert began.memory_format_for(torch.device("cuda"), "auto") == torch.channels_last
    expected = torch.channels_last if torch.backends.mkldnn.is_available() else torch.contiguous_format
    assert began.memory_format_for(torch.device("cpu"), "auto") == expected


@pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(), reason="torch.compile is not supported here")
@pytest.mark.parametrize("order", ["alternating", "simultaneous"])
def test_compiled_step_matches_eager(order, caplog):
    compiled = make_family(tiny_config(order, compile=True))
    eager = make_family(tiny_config(order))
    real, z = batch()
    with caplog.at_level(logging.WARNING, logger=began.__name__):
        for _ in range(2):
            a, b = our_step(compiled, real, z), our_step(eager, real, z)
    assert "compiling" not in caplog.text  # it really ran compiled, no fallback
    assert compiled._D_train.compiled is not None and compiled._G_train.compiled is not None
    assert_same_step(a, (compiled.G, compiled.D), b, (eager.G, eager.D))


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch, caplog):
    def broken_compile(module):
        def fails(*args):
            raise RuntimeError("no C++ compiler found")

        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    fallback = make_family(tiny_config("simultaneous", compile=True))
    eager = make_family(tiny_config("simultaneous"))
    real, z = batch()
    with caplog.at_level(logging.WARNING, logger=began.__name__):
        a, b = our_step(fallback, real, z), our_step(eager, real, z)
    assert "train.compile: compiling G failed (RuntimeError: no C++ compiler found)" in caplog.text
    assert fallback._G_train.compiled is None
    assert_same_step(a, (fallback.G, fallback.D), b, (eager.G, eager.D), loss_rtol=0, param_rtol=0)


def test_scale_grad_is_identity_forward_and_scales_only_the_gradient():
    weight = torch.randn(3, requires_grad=True)
    out = ScaleGrad.apply(weight, torch.tensor(-0.25))
    assert torch.equal(out, weight)
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(weight.grad, torch.tensor([-0.25, -0.5, -0.75]))


def test_simultaneous_gives_d_the_d_loss_gradient_and_g_the_g_loss_gradient():
    """One backward, two different objectives: D gets grad L_D, G gets grad L_G (not grad L_D)."""
    family = make_family(tiny_config("simultaneous"), k_t=0.5)
    real, z = batch()
    family._simultaneous(real, z[0])
    G, D = copy.deepcopy(family.G), copy.deepcopy(family.D)  # not stepped yet: the weights of the gradients
    fake = G(z[0])
    loss_real = (D(real) - real).abs().mean()
    loss_fake = (D(fake) - fake).abs().mean()
    grad_D = torch.autograd.grad(loss_real - 0.5 * loss_fake, list(D.parameters()), retain_graph=True)
    grad_G = torch.autograd.grad(loss_fake, list(G.parameters()))
    for got, want in zip([p.grad for p in family.D.parameters()], grad_D):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    for got, want in zip([p.grad for p in family.G.parameters()], grad_G):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)


def test_cpu_refuses_fp16_and_bf16_without_native_bf16(monkeypatch):
    with pytest.raises(ConfigError, match="train.precision=fp16"):
        load_config(None, ["train.precision=fp16", "train.device=cpu"])
    with pytest.raises(ValueError, match="needs a CUDA device"):
        BeganFamily(tiny_config(precision="fp16"), torch.device("cpu"))
    if not torch.cuda.is_available():  # train.device=auto on a machine without a GPU
        with pytest.raises(ConfigError, match="fp16 needs a GPU"):
            train_config(None, ["train.precision=fp16", "run.dir=/nonexistent/a"])
    monkeypatch.setattr(began, "cpu_has_bf16", lambda: False)  # an AVX2 CPU
    with pytest.raises(ValueError, match="bf16 on a CPU with avx512_bf16"):
        BeganFamily(tiny_config(precision="bf16"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="neither avx512_bf16 nor AMX"):
        train_config(None, ["train.precision=bf16", "train.device=cpu", "run.dir=/nonexistent/b"])


def test_compile_and_fp32_are_accepted_by_the_cli(tmp_path):
    assert train_config(None, ["train.compile=true", f"run.dir={tmp_path / 'run'}"]).train.compile is True


@pytest.mark.parametrize(
    "device,precision",
    [
        pytest.param("cuda", "bf16", marks=pytest.mark.cuda),
        pytest.param("cuda", "fp16", marks=pytest.mark.cuda),
        pytest.param("cpu", "bf16", marks=pytest.mark.skipif(not began.cpu_has_bf16(), reason="no avx512_bf16 or AMX")),
    ],
)
@pytest.mark.parametrize("order", ["alternating", "simultaneous"])
def test_reduced_precision_is_close_to_fp32(device, precision, order):
    low = make_family(tiny_config(order, precision=precision), device=device)
    full = make_family(tiny_config(order), device=device)
    real, z = batch(device)
    a, b = our_step(low, real, z), our_step(full, real, z)
    for key in LOSSES:
        torch.testing.assert_close(a[key], b[key], rtol=5e-2, atol=1e-3, msg=key)
    for p, q in zip(low.G.parameters(), full.G.parameters()):
        torch.testing.assert_close(p, q, rtol=5e-2, atol=1e-3)
    assert all(p.dtype == torch.float32 for p in low.G.parameters())  # master weights stay fp32


@pytest.mark.cuda
def test_fp16_loss_scale_is_checkpointed_and_restored():
    family = make_family(tiny_config(precision="fp16"), device="cuda")
    real, z = batch("cuda")
    our_step(family, real, z)
    state = family.state_dict()
    assert state["scaler"]["scale"] == family.scaler.get_scale()
    restored = make_family(tiny_config(precision="fp16"), device="cuda")
    restored.scaler.update(123.0)
    restored.load_state_dict(state)
    assert restored.scaler.get_scale() == family.scaler.get_scale()
    a, b = our_step(family, real, z), our_step(restored, real, z)
    for key in LOSSES:
        assert torch.equal(a[key], b[key]), key


def test_fp32_checkpoint_has_no_scaler_entry():
    assert "scaler" not in make_family(tiny_config()).state_dict()
