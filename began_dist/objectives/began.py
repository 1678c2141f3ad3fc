"""The BEGAN family: networks, optimisers, k_t, and one training step."""

from __future__ import annotations

import torch

from began_dist.distributed import comm
from began_dist.models.began import build_networks
from began_dist.objectives.equilibrium import balance, convergence, update_k


def reconstruction_loss(autoencoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """L(v) = mean |v - D(v)| over pixels, channels and batch (L1, eta = 1)."""
    return (autoencoder(images) - images).abs().mean()


class BeganFamily:
    latents_per_step_by_order = {"alternating": 2, "simultaneous": 1}

    def __init__(self, cfg, device: torch.device):
        self.device = device
        self.gamma, self.lambda_k = float(cfg.train.gamma), float(cfg.train.lambda_k)
        self.order = cfg.train.update_order
        self.latents_per_step = self.latents_per_step_by_order[self.order]
        self.latent_size = cfg.model.nz
        self.vanishing_residual, self.residual_steps = cfg.model.vanishing_residual, cfg.model.residual_steps
        self.G, self.D = (net.to(device) for net in build_networks(cfg.model))
        # The modules each phase trains through: G and D themselves, or their DDP wrappers
        # (`distribute`). The frozen network of a phase is always called unwrapped, so it
        # neither all-reduces nor waits for gradients it will never get.
        self.G_train, self.D_train = self.G, self.D
        adam = dict(lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))
        self.opt_G = torch.optim.Adam(self.G.parameters(), **adam)
        self.opt_D = torch.optim.Adam(self.D.parameters(), **adam)
        self.optimizers = (self.opt_G, self.opt_D)
        self.k_t = torch.zeros((), device=device)  # k_0 = 0

    # -- the step -------------------------------------------------------------------------
    def train_step(self, real: torch.Tensor, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.order == "alternating":
            z_D, z_G = latents
            with torch.no_grad():
                fake_D = self.G(z_D)
            loss_real, loss_D = self._d_phase(real, fake_D)
            self.opt_D.step()
            loss_G = self._g_phase(self.G_train(z_G))
            self.opt_G.step()
        else:
            # Simultaneous (carpedm20-TF): one z, both gradients at the current weights, then both steps.
            fake = self.G_train(latents[0])
            loss_real, loss_D = self._d_phase(real, fake.detach())
            loss_G = self._g_phase(fake)
            self.opt_D.step()
            self.opt_G.step()
        return self._equilibrium(loss_real, loss_G, loss_D)

    def _d_phase(self, real: torch.Tensor, fake: torch.Tensor):
        """(1) D step: minimise L_D = L(x) - k_t L(G(z_D)); G is not back-propagated (fake is detached)."""
        n = real.shape[0]
        both = torch.cat([real, fake])  # one forward: D has no batch statistics, so this equals two
        error = (self.D_train(both) - both).abs()
        loss_real, loss_fake = error[:n].mean(), error[n:].mean()
        loss_D = loss_real - self.k_t * loss_fake
        self.opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        return loss_real.detach(), loss_D.detach()

    def _g_phase(self, fake: torch.Tensor) -> torch.Tensor:
        """(2) G step: minimise L_G = L(G(z_G)); D is frozen, so no D weight gradients are computed."""
        self.D.requires_grad_(False)
        loss_G = reconstruction_loss(self.D, fake)
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self.D.requires_grad_(True)
        return loss_G.detach()

    def _equilibrium(self, loss_real, loss_G, loss_D) -> dict[str, torch.Tensor]:
        """(3) equilibrium: k_t += lambda_k (gamma L(x) - L(G(z_G))), from all-reduced losses."""
        losses = comm.all_reduce_mean(torch.stack([loss_real, loss_G, loss_D]))
        loss_real, loss_G, loss_D = losses.unbind()
        self.k_t = update_k(self.k_t, loss_real, loss_G, self.gamma, self.lambda_k)
        return {
            "L_x": loss_real,
            "L_Gz": loss_G,
            "L_D": loss_D,
            "L_G": loss_G,
            "k_t": self.k_t,
            "M": convergence(loss_real, loss_G, self.gamma),
            "balance": balance(loss_real, loss_G, self.gamma),
        }

    # -- distribution, schedules, sampling, checkpoints ----------------------------------
    def distribute(self, wrap) -> None:
        """Train through `wrap(network)` (e.g. DDP), one wrapper per network."""
        self.G_train, self.D_train = wrap(self.G), wrap(self.D)

    def set_step(self, step: int) -> None:
        if self.vanishing_residual:
            carry = max(0.0, 1.0 - step / self.residual_steps)
            self.G.set_carry(carry)
            self.D.set_carry(carry)

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return self.G(z.to(self.device))

    @torch.no_grad()
    def image_panels(self, real: torch.Tensor, fixed_z: torch.Tensor) -> dict[str, torch.Tensor]:
        fake = self.generate(fixed_z)
        return {"G_fixed": fake, "D_real": self.D(real), "D_fake": self.D(fake)}

    def state_dict(self) -> dict:
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "k_t": self.k_t.detach().cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.k_t = state["k_t"].to(self.device)
