"""The multi-generator BEGAN family (docs/multigen.md; seed 000, docs/design.md): K generators, one gated D.

Per step, with y the batch's component labels (the fakes take the real images' labels):
  (1) D step: minimise L_D = T(x_r) - k_t T_D(x_f),   x_f = compose(G(z_D), y) detached
  (2) G step: minimise L_G = T(x_f) [+ real_recon_weight R + diversity_weight V], D frozen
  (3) equilibrium: k_t += lambda_k (gamma T(x_r) - T(x_f)), from all-reduced terms
where the combined terms (seed README) are
  T(x_r) = L_rec(x_r) + w L_z(dz_r)         L_z(dz_r): D's real codes match U(-1, 1)'s moments
  T(x_f) = L_rec(x_f) + w L_z(dz_f)         L_z(dz_f): D's code of a fake matches its z
T_D(x_f) is T(x_f) (seed: D pushes fake codes away) or L_rec(x_f) alone with +w L_z(dz_f)
added to L_D (`latent_adversarial=false`: D recovers z, as InfoGAN's Q). Our additions:
  R = |compose(G(sg E(x_r)), y) - x_r|   G rebuilds real images from D's real codes
  V = sum_k 1 / (mean|G_k(z) - G_k(z')| / mean|z_k - z'_k| + 1e-5)   mode seeking per generator
With `train.multigen.gammas` every term splits into K shares T = sum_k T_k (`*_split` below), one k_k
per generator: L_D = T(x_r) - sum_k k_k T_D,k(x_f) and k_k += lambda_k (gamma_k T_k(x_r) - T_k(x_f)).
A shared latent slice (`model.multigen.shared_z`) is read by every generator: its units' latent
terms are charged to the K shares evenly, and V's z_k is the generator's whole input cat(z_s, z_k).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from began_dist.config import ConfigError, TrainConfig
from began_dist.config.validate import one_of
from began_dist.distributed import comm
from began_dist.families.base import BEGAN_SCALARS, Family, adam_for, frozen, memory_format_for
from began_dist.families.equilibrium import balance, convergence, update_k
from began_dist.models.multigen import build_multigen, compose, label_combinations

UNIFORM_STD = 1 / math.sqrt(3)  # standard deviation of U(-1, 1)
DIVERSITY_EPS = 1e-5
INK_FLOOR = 1e-3  # a pixel no on-component draws is charged evenly to the on components


def reconstruction(kind: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_rec: mean |v - D(v)| (l1) or mean (v - D(v))^2 (l2) over pixels, channels and batch."""
    error = output.float() - target.float()
    return error.abs().mean() if kind == "l1" else error.square().mean()


def latent_error(kind: str, code: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """L_z(dz_f): l2 = mean over images of ||z - dz|| (seed README), l1 = mean |z - dz|, mse = mean (z - dz)^2."""
    error = code.float() - z.float()
    if kind == "l2":
        return error.norm(dim=1).mean()
    return error.abs().mean() if kind == "l1" else error.square().mean()


def reconstruction_split(kind: str, output, target, parts, y) -> torch.Tensor:
    """(K,) shares of L_rec: each pixel's error is charged to the on components in proportion to the
    ink D's sub-decoders draw there (detached: the charge routes the gradient, it is not trained)."""
    error = output.float() - target.float()
    pixel = error.abs() if kind == "l1" else error.square()  # (N, C, H, W)
    ink = (parts.detach().float().clamp_min(0) + INK_FLOOR) * y[:, :, None, None, None].float()
    share = ink / ink.sum(1, keepdim=True).clamp_min(1e-12)  # (N, K, C, H, W), sums to 1 over K
    return (share * pixel[:, None]).flatten(2).sum(2).mean(0) / pixel[0].numel()


def charge_shared(slice_sums: torch.Tensor) -> torch.Tensor:
    """Per-slice sums [shared, own_1 .. own_K] -> (K,) shares: own_k + shared / K."""
    return slice_sums[1:] + slice_sums[0] / (len(slice_sums) - 1)


def latent_error_split(kind: str, code, z, z_sizes: list[int], shared_z: int = 0) -> torch.Tensor:
    """(K,) shares of `latent_error`, one per z slice; they sum to it (l2: unit u adds e_u^2 / ||e||)."""
    error = code.float() - z.float()
    if kind == "l2":
        units = error.square() / error.norm(dim=1, keepdim=True).clamp_min(1e-12)
    else:
        units = (error.abs() if kind == "l1" else error.square()) / error.shape[1]
    return charge_shared(torch.stack([part.sum(1).mean() for part in units.split([shared_z, *z_sizes], dim=1)]))


def global_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over dim 0 of the global batch (every rank's rows), differentiable."""
    count = comm.all_reduce_sum_with_grad(values.new_tensor(float(len(values))))
    return comm.all_reduce_sum_with_grad(values.sum(0)) / count


def moment_errors(code: torch.Tensor) -> torch.Tensor:
    """Per code unit, |mean| + |std - std(U(-1, 1))| across the global batch."""
    code = code.float()
    count = comm.all_reduce_sum_with_grad(code.new_tensor(float(len(code))))
    mean, mean_square = global_mean(code), global_mean(code.square())
    std = ((mean_square - mean.square()) * count / (count - 1)).clamp_min(0).sqrt()
    return mean.abs() + (std - UNIFORM_STD).abs()


def code_moments(code: torch.Tensor) -> torch.Tensor:
    """L_z(dz_r): the mean over code units of `moment_errors`."""
    return moment_errors(code).mean()


def code_moments_split(code: torch.Tensor, z_sizes: list[int], shared_z: int = 0) -> torch.Tensor:
    """(K,) shares of `code_moments`, one per code slice."""
    errors = moment_errors(code)
    return charge_shared(torch.stack([part.sum() for part in errors.split([shared_z, *z_sizes])])) / len(errors)


def mode_seeking(parts: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
    """Sum over generators of 1 / (image distance / latent distance), images 2i and 2i + 1 paired
    (the same pairs however the global batch is split over ranks); inputs[k] is G_k's latent input."""
    pairs = len(parts) // 2
    a, b = parts[0 : 2 * pairs : 2], parts[1 : 2 * pairs : 2]
    image_distance = (a - b).abs().flatten(2).mean(2)  # (pairs, K)
    latent_distance = torch.stack([(s[0 : 2 * pairs : 2] - s[1 : 2 * pairs : 2]).abs().mean(1) for s in inputs], 1)
    ratio = global_mean(image_distance / latent_distance.clamp_min(1e-8))
    return (1 / (ratio + DIVERSITY_EPS)).sum()


MULTIGEN_CHOICES = {
    "model.multigen.reconstruction": ("l1", "l2"),
    "model.multigen.latent_loss": ("l2", "l1", "mse"),
    "model.multigen.real_code_loss": ("moments", "none"),
    "model.multigen.composition": ("sum", "max"),
}


def validate_multigen(cfg) -> None:
    """model.family=multigen's refusals (called through the config layer's family registry)."""
    mg = cfg.model.multigen
    one_of(cfg, MULTIGEN_CHOICES)
    if not mg.z_sizes or any(size <= 0 for size in mg.z_sizes):
        raise ConfigError(f"model.multigen.z_sizes={list(mg.z_sizes)}: one positive latent size per generator")
    for key in ("shared_z", "latent_weight", "real_recon_weight", "diversity_weight"):
        if mg[key] < 0:
            raise ConfigError(f"model.multigen.{key}={mg[key]}: must be >= 0")
    if cfg.data.source not in ("shapes", "shards"):
        raise ConfigError(f"data.source={cfg.data.source}: model.family=multigen needs labelled data (shapes|shards)")
    if cfg.train.multigen.gammas is not None:
        _check_gammas(cfg)


def _check_gammas(cfg) -> None:
    """One gamma in (0, 1] per generator; train.gamma then means nothing, so it must stay at its default."""
    gammas, count = list(cfg.train.multigen.gammas), len(cfg.model.multigen.z_sizes)
    if len(gammas) != count:
        raise ConfigError(
            f"train.multigen.gammas={gammas}: needs one gamma per generator ({count}, as model.multigen.z_sizes)"
        )
    if not all(0.0 < gamma <= 1.0 for gamma in gammas):
        raise ConfigError(f"train.multigen.gammas={gammas}: each must be in (0, 1]")
    if cfg.train.gamma != TrainConfig.gamma:
        raise ConfigError(f"train.gamma={cfg.train.gamma}: means nothing with train.multigen.gammas; leave it unset")


class MultigenFamily(Family):
    name = "multigen"
    config_sections = ("model.multigen", "train.multigen")
    # its latent is model.multigen.z_sizes, D's code the same; its step is alternating fp32 eager
    meaningless_keys = (
        "model.nz",
        "model.nh",
        "train.update_order",
        "train.compile",
        "train.precision",
        "train.g_ema_half_life",  # samples come from G (no moving average built)
    )
    latents_per_step = 2  # z_D and z_G
    needs_labels = True  # train_step takes the batch's component labels y (N, K)

    validate_config = staticmethod(validate_multigen)

    def __init__(self, cfg, device: torch.device):
        super().__init__(cfg, device)
        self.options = mg = cfg.model.multigen
        self.z_sizes, self.shared_z = list(mg.z_sizes), int(mg.shared_z)
        self.composition = mg.composition
        self.latent_size = self.shared_z + sum(self.z_sizes)
        self.gamma, self.lambda_k = float(cfg.train.gamma), float(cfg.train.lambda_k)
        gammas = cfg.train.multigen.gammas
        self.per_component = gammas is not None  # the terms are then (K,) shares, else totals of shape ()
        if self.per_component:
            self.gamma = torch.tensor(list(gammas), dtype=torch.float32, device=device)
            components = {f"k_{index}": f"equilibrium/k_{index}" for index in range(len(self.z_sizes))}
            self.scalar_tags = {**BEGAN_SCALARS, **components}
        self.memory_format = memory_format_for(device, cfg.train.memory_format)
        self.G, self.D = (net.to(device, memory_format=self.memory_format) for net in build_multigen(cfg.model))
        self.G_train, self.D_train = self.G, self.D  # or their DDP wrappers (`distribute`)
        self.opt_G, self.opt_D = adam_for(cfg.train, self.G, self.D)
        self.optimizers = (self.opt_G, self.opt_D)
        self.k_t = torch.zeros(len(self.z_sizes) if self.per_component else (), device=device)  # k_0 = 0

    def compose(self, parts: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return compose(parts, y, self.composition)

    # -- the combined terms ----------------------------------------------------------------
    # Each is the total (shape ()) or, per component, its (K,) shares summing to the total.
    def _reconstruction(self, recon, target, parts, y) -> torch.Tensor:
        if self.per_component:
            return reconstruction_split(self.options.reconstruction, recon, target, parts, y)
        return reconstruction(self.options.reconstruction, recon, target)

    def _real_term(self, real, recon, code, parts, y) -> torch.Tensor:
        """T(x_r) = L_rec(x_r) + w L_z(dz_r)."""
        term = self._reconstruction(recon, real, parts, y)
        if self.options.real_code_loss == "moments":
            split = self.per_component
            moments = code_moments_split(code, self.z_sizes, self.shared_z) if split else code_moments(code)
            term = term + self.options.latent_weight * moments
        return term

    def _fake_terms(self, fake, recon, code, parts, y, z) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_rec(x_f), w L_z(dz_f))."""
        kind = self.options.latent_loss
        if self.per_component:
            error = latent_error_split(kind, code, z, self.z_sizes, self.shared_z)
        else:
            error = latent_error(kind, code, z)
        return self._reconstruction(recon, fake, parts, y), self.options.latent_weight * error

    # -- the step ----------------------------------------------------------------------------
    def train_step(self, real: torch.Tensor, latents: torch.Tensor, labels: torch.Tensor) -> dict:
        real = real.contiguous(memory_format=self.memory_format)
        y = labels.to(self.device, torch.float32)
        z_D, z_G = latents
        with torch.no_grad():
            fake_D = self.compose(self.G(z_D), y)  # G is not back-propagated in the D phase
        real_term, loss_D, real_code = self._d_phase(real, fake_D, z_D, y)
        self.opt_D.step()
        fake_term, loss_G = self._g_phase(z_G, y, real, real_code)
        self.opt_G.step()
        return self._equilibrium(real_term, fake_term, loss_D, loss_G)

    def _d_phase(self, real, fake, z, y):
        """(1) D step on one D forward over cat(real, fake): minimise T(x_r) - k_t T_D(x_f)."""
        n = real.shape[0]
        y2 = torch.cat([y, y])
        recon, code, parts = self.D_train(torch.cat([real, fake]), y2, with_parts=True)
        real_term = self._real_term(real, recon[:n], code[:n], parts[:n], y)
        fake_rec, fake_z = self._fake_terms(fake, recon[n:], code[n:], parts[n:], y, z)
        if self.options.latent_adversarial:
            loss_D = real_term.sum() - (self.k_t * (fake_rec + fake_z)).sum()
        else:
            loss_D = real_term.sum() - (self.k_t * fake_rec).sum() + fake_z.sum()
        self.opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        return real_term.detach(), loss_D.detach(), code[:n].detach()

    def _g_phase(self, z, y, real, real_code):
        """(2) G step with D frozen: minimise T(x_f) plus the optional real-code and diversity terms.

        One G forward serves every term: the fresh z and, with real_recon_weight, D's real codes.
        """
        mg, n = self.options, z.shape[0]
        rebuild = mg.real_recon_weight > 0
        with frozen(self.D):
            parts = self.G_train(torch.cat([z, real_code]) if rebuild else z)
            fake = self.compose(parts[:n], y)
            recon, code, d_parts = self.D(fake, y, with_parts=True)
            fake_rec, fake_z = self._fake_terms(fake, recon, code, d_parts, y, z)
            fake_term = fake_rec + fake_z
            loss_G = fake_term.sum()
            if rebuild:
                loss_G = loss_G + mg.real_recon_weight * (self.compose(parts[n:], y) - real).abs().mean()
            if mg.diversity_weight > 0:
                loss_G = loss_G + mg.diversity_weight * mode_seeking(parts[:n], self.G.inputs(z))
            self.opt_G.zero_grad(set_to_none=True)
            loss_G.backward()
        return fake_term.detach(), loss_G.detach()

    def _equilibrium(self, real_term, fake_term, loss_D, loss_G) -> dict[str, torch.Tensor]:
        """(3) k_t += lambda_k (gamma T(x_r) - T(x_f)), from all-reduced terms (per component: k_k, gamma_k,
        T_k; M = T(x_r) + sum_k |gamma_k T_k(x_r) - T_k(x_f)|, logged k_t = mean k_k)."""
        shape, count = real_term.shape, real_term.numel()
        flat = [real_term.reshape(-1), fake_term.reshape(-1), loss_D.reshape(1), loss_G.reshape(1)]
        losses = comm.all_reduce_mean(torch.cat(flat))
        real_term, fake_term = losses[:count].reshape(shape), losses[count : 2 * count].reshape(shape)
        self.k_t = update_k(self.k_t, real_term, fake_term, self.gamma, self.lambda_k)
        gap = balance(real_term, fake_term, self.gamma)
        stats = {
            "L_x": real_term.sum(),
            "L_Gz": fake_term.sum(),
            "L_D": losses[-2],
            "L_G": losses[-1],
            "k_t": self.k_t.mean(),
            "M": convergence(real_term, fake_term, self.gamma).sum(),  # per component: the sum of each M_k
            "balance": gap.sum(),
        }
        if self.per_component:
            stats.update((f"k_{index}", k) for index, k in enumerate(self.k_t.unbind()))
        return stats

    # -- distribution, sampling (schedules, checkpoints: base.Family) ------------------------
    def distribute(self, wrap) -> None:
        self.G_train, self.D_train = wrap(self.G), wrap(self.D)

    def describe(self) -> str:
        return f"{self.shape()}, gamma {self.cfg.train.gamma}"  # no bottleneck Nh: D's code is z's size

    def all_on(self, count: int) -> torch.Tensor:
        return torch.ones(count, len(self.z_sizes), device=self.device)

    @torch.no_grad()
    def parts(self, z: torch.Tensor) -> torch.Tensor:
        """(N, K, C, H, W) ink parts G_k(z_k)."""
        return self.G(z.to(self.device))

    @torch.no_grad()
    def generate(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """compose(G(z), y); y = None switches every component on."""
        z = z.to(self.device)
        y = self.all_on(len(z)) if labels is None else labels.to(self.device, torch.float32)
        return self.compose(self.G(z), y)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = self.all_on(len(x)) if labels is None else labels.to(self.device, torch.float32)
        return self.D(x, y)[0]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """D's code of images x: one slice per generator."""
        return self.D.encoder(x.to(self.device))

    @torch.no_grad()
    def image_panels(self, real, fixed_z, labels: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """G_fixed cycles y over every non-empty combination (the never-seen ones too); D sees real labels."""
        combos = label_combinations(len(self.z_sizes))
        fixed_y = combos[torch.arange(len(fixed_z)) % len(combos)]
        fake = self.generate(fixed_z, fixed_y)
        real_y = self.all_on(len(real)) if labels is None else labels
        return {"G_fixed": fake, "D_real": self.reconstruct(real, real_y), "D_fake": self.reconstruct(fake, fixed_y)}
