"""The VAE-GAN family (Larsen et al. 2016; tf-vaegan, docs/design.md): E, G, D, their optimisers and one step.

Per step (the seed's schedule), from x, reparameterisation noise eps and prior draws z_p:
    z~ = mu(x) + sigma(x) eps                            (tanh(.) with model.vaegan.tanh_z)
    (1) D step:  minimise L_D = BCE(D(x), 1) + BCE(D(G(z~)), 0) + BCE(D(G(z_p)), 0)
    (2) G steps (train.vaegan.g_steps, 2): minimise
                 L_G = w L_feat + BCE(D(G(z~)), 1) + BCE(D(G(z_p)), 1)       D frozen
    (3) E step:  minimise L_E = kl_weight L_kl + L_feat                      G, D frozen
with L_kl = KL(N(mu, sigma^2) || N(0, I)) = -1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)
and L_feat = 1/2 ||Dis_l(x) - Dis_l(G(z~))||^2 (Larsen's Gaussian feature likelihood),
each summed over latent / feature dimensions and averaged over the batch; w is
train.vaegan.feature_weight (Larsen's style/content gamma; 0.1 in the seed).

One eps and one z_p serve the whole step, and E(x) is computed once for phases (1)
and (2), where E does not change. Both latent batches come from the loop's
LatentSource as U(-1, 1) draws (so the data-parallelism rule holds unchanged) and
are mapped to N(0, I) by the inverse normal CDF; with tanh_z the prior is U(-1, 1)
itself and the KL term stays the Gaussian one before the tanh, as in the seed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from began_dist.config import ConfigError
from began_dist.config.validate import positive
from began_dist.distributed import comm
from began_dist.families.base import Family, adam_for, frozen
from began_dist.models.vaegan import build_vaegan

EDGE = 1e-6  # keeps erfinv finite at u = -1


def uniform_to_normal(u: torch.Tensor) -> torch.Tensor:
    """U(-1, 1) -> N(0, 1) elementwise: sqrt(2) erfinv(u), the inverse normal CDF of (u + 1) / 2."""
    return math.sqrt(2.0) * torch.erfinv(u.clamp(-1 + EDGE, 1 - EDGE))


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dimensions, mean over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(1).mean()


def feature_loss(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """1/2 ||Dis_l(x) - Dis_l(x~)||^2 per image (unit-variance Gaussian, constants dropped), mean over the batch."""
    return 0.5 * (real_features - fake_features).pow(2).sum(1).mean()


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def validate_vaegan(cfg) -> None:
    """model.family=vaegan's refusals (called through the config layer's family registry)."""
    for key in ("feature_weight", "kl_weight"):
        value = cfg.train.vaegan[key]
        if not 0.0 <= value < math.inf:
            raise ConfigError(f"train.vaegan.{key}={value}: must be >= 0 and finite")
    positive(cfg, "train.vaegan.g_steps")
    if cfg.train.memory_format == "channels_last":
        raise ConfigError("train.memory_format=channels_last: vaegan's networks run in NCHW (auto or contiguous)")


class VaeganFamily(Family):
    name = "vaegan"
    # tf-vaegan's recipe (docs/design.md) (Adam 2e-4, beta1 0.5, batch 64, Nz 100), applied under the user's values
    # so a run's config.yaml states them.
    config_defaults = {
        "model": {"nz": 100, "output": "tanh"},
        "train": {"lr": 2.0e-4, "beta1": 0.5, "batch_size": 64, "lr_control": "none"},
    }
    config_sections = ("model.vaegan", "train.vaegan")
    meaningless_keys = (
        "model.nh",
        "model.vanishing_residual",
        "model.residual_steps",
        "train.gamma",
        "train.lambda_k",
        "train.update_order",
        "train.compile",
        "train.precision",
        "train.g_ema_half_life",  # samples come from G (no moving average built)
    )
    validate_config = staticmethod(validate_vaegan)
    latents_per_step = 2  # eps and z_p
    # What the loop logs for this family (BEGAN's are base.Family's): stats.jsonl key -> TensorBoard tag.
    logged_losses = ("L_pix", "L_kl", "L_feat", "L_E", "L_GAN", "L_G", "L_D")
    scalar_tags = {key: f"loss/{key}" for key in logged_losses}
    progress_keys = ("L_pix", "L_kl", "L_D")
    lr_monitor = "L_pix"  # what train.lr_control=m_stall watches
    replicated_networks = ("E", "G", "D")
    honours_memory_format = False  # NCHW networks: `auto` records contiguous, channels_last is refused

    def __init__(self, cfg, device: torch.device):
        super().__init__(cfg, device)
        self.latent_size = cfg.model.nz
        self.tanh_z = bool(cfg.model.vaegan.tanh_z)
        v = cfg.train.vaegan
        self.feature_weight, self.kl_weight, self.g_steps = float(v.feature_weight), float(v.kl_weight), v.g_steps
        self.E, self.G, self.D = (net.to(device) for net in build_vaegan(cfg.model))
        self.E_train, self.G_train, self.D_train = self.E, self.G, self.D  # DDP wrappers after `distribute`
        self.opt_E, self.opt_G, self.opt_D = adam_for(cfg.train, self.E, self.G, self.D)
        self.optimizers = (self.opt_G, self.opt_D, self.opt_E)

    # -- latents --------------------------------------------------------------------------
    def prior(self, u: torch.Tensor) -> torch.Tensor:
        """z_p from U(-1, 1) draws: N(0, I), or U(-1, 1) itself with tanh_z."""
        return u if self.tanh_z else uniform_to_normal(u)

    def _squash(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z) if self.tanh_z else z

    # -- the step -------------------------------------------------------------------------
    def train_step(self, real: torch.Tensor, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        eps, z_p = uniform_to_normal(latents[0]), self.prior(latents[1])
        with torch.no_grad():
            mu, logvar = self.E(real)  # E changes only in phase (3)
            z_tilde = self._squash(mu + (0.5 * logvar).exp() * eps)
            fakes = self.G(torch.cat([z_tilde, z_p]))
        loss_D = self._d_phase(real, fakes)
        with torch.no_grad():
            real_features = self.D(real)[1]  # D is frozen from here on
        for _ in range(self.g_steps):
            loss_G, loss_gan = self._g_phase(real_features, z_tilde, z_p)
        loss_kl, loss_feat, loss_pix = self._e_phase(real, real_features, eps)
        loss_E = self.kl_weight * loss_kl + loss_feat
        stats = torch.stack([loss_pix, loss_kl, loss_feat, loss_E, loss_gan, loss_G, loss_D])
        return dict(zip(self.logged_losses, comm.all_reduce_mean(stats).unbind()))

    def _d_phase(self, real: torch.Tensor, fakes: torch.Tensor) -> torch.Tensor:
        """(1) D step: real -> 1, G(z~) and G(z_p) -> 0; one forward over all three (D has no batch statistics)."""
        n = real.shape[0]
        logits = self.D_train(torch.cat([real, fakes]))[0]
        loss = bce(logits[:n], 1.0) + bce(logits[n : 2 * n], 0.0) + bce(logits[2 * n :], 0.0)
        self.opt_D.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_D.step()
        return loss.detach()

    def _g_phase(self, real_features: torch.Tensor, z_tilde: torch.Tensor, z_p: torch.Tensor):
        """(2) G step: w L_feat + non-saturating GAN loss on G(z~) and G(z_p); D frozen."""
        n = z_tilde.shape[0]
        with frozen(self.D):
            logits, features = self.D(self.G_train(torch.cat([z_tilde, z_p])))
            loss_gan = bce(logits[:n], 1.0) + bce(logits[n:], 1.0)
            loss = self.feature_weight * feature_loss(real_features, features[:n]) + loss_gan
            self.opt_G.zero_grad(set_to_none=True)
            loss.backward()
        self.opt_G.step()
        return loss.detach(), loss_gan.detach()

    def _e_phase(self, real: torch.Tensor, real_features: torch.Tensor, eps: torch.Tensor):
        """(3) E step: kl_weight L_kl + L_feat through the frozen G and D."""
        with frozen(self.G, self.D):
            mu, logvar = self.E_train(real)
            reconstruction = self.G(self._squash(mu + (0.5 * logvar).exp() * eps))
            loss_kl = kl_loss(mu, logvar)
            loss_feat = feature_loss(real_features, self.D(reconstruction)[1])
            self.opt_E.zero_grad(set_to_none=True)
            (self.kl_weight * loss_kl + loss_feat).backward()
        self.opt_E.step()
        loss_pix = (reconstruction.detach() - real).abs().mean()
        return loss_kl.detach(), loss_feat.detach(), loss_pix

    # -- distribution, sampling, latents, checkpoints -------------------------------------
    def distribute(self, wrap) -> None:
        """Train through `wrap(network)` (e.g. DDP), one wrapper per network."""
        self.E_train, self.G_train, self.D_train = wrap(self.E), wrap(self.G), wrap(self.D)

    def set_step(self, step: int) -> None:
        """No step-dependent schedule."""

    def describe(self) -> str:
        return f"{self.shape()}, feature weight {self.cfg.train.vaegan.feature_weight}"  # no Nh, no gamma

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The latent of each image: the posterior mean mu (tanh(mu) with tanh_z)."""
        return self._squash(self.E(images.to(self.device))[0])

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.G(z.to(self.device))

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """G(E(x)) through the posterior mean: what the recon metric measures."""
        return self.decode(self.encode(images))

    @property
    def latent_bound(self):
        """|z| <= bound for latents G was trained on (None: unbounded, the Gaussian prior)."""
        return 1.0 if self.tanh_z else None

    @torch.no_grad()
    def generate(self, u: torch.Tensor) -> torch.Tensor:
        """Images from U(-1, 1) draws (the loop's fixed z, the metrics' z), mapped to the prior."""
        return self.G(self.prior(u.to(self.device)))

    @torch.no_grad()
    def image_panels(self, real: torch.Tensor, fixed_z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"G_fixed": self.generate(fixed_z), "real": real, "reconstruction": self.reconstruct(real)}

    def state_dict(self) -> dict:
        return {name: getattr(self, name).state_dict() for name in ("E", "G", "D", "opt_E", "opt_G", "opt_D")}

    def load_state_dict(self, state: dict) -> None:
        for name in ("E", "G", "D", "opt_E", "opt_G", "opt_D"):
            getattr(self, name).load_state_dict(state[name])
