"""A plain BEGAN training step, written the way public PyTorch ports write it.

The order is 1Konny/BEGAN-pytorch's solver: a D step on real images and on a
detached fake as separate forwards, then a G step with a fresh z whose loss
back-propagates through D with D's weights still trainable (their gradients are
computed and thrown away by the next zero_grad). Eager fp32, NCHW, no fusion.

It is the yardstick of `benchmarks/step_speed.py` and of the equivalence tests:
same math as `BeganFamily.train_step`, none of its savings. Keep it plain: a
slowed-down reference would make every ratio against it meaningless.
"""

from __future__ import annotations

import torch


def _l1_reconstruction(D: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.mean(torch.abs(D(images) - images))


def reference_step(
    G: torch.nn.Module,
    D: torch.nn.Module,
    opt_G: torch.optim.Optimizer,
    opt_D: torch.optim.Optimizer,
    k_t: torch.Tensor,  # current k_t, a 0-dim tensor
    real: torch.Tensor,  # real images, (B, C, H, W) in the model range
    z_D: torch.Tensor,  # latents of the D step, (B, Nz)
    z_G: torch.Tensor,  # latents of the G step, (B, Nz); unused when simultaneous
    gamma: float,  # diversity ratio
    lambda_k: float,  # k_t learning rate
    update_order: str = "alternating",  # alternating | simultaneous
) -> dict:
    """One step; steps opt_G and opt_D in place and returns the new k_t and L_x, L_Gz, L_D, L_G."""
    if update_order == "alternating":
        # (1) D step: minimise L_D = L(x) - k_t L(G(z_D)), two D forwards.
        fake = G(z_D)
        loss_real = _l1_reconstruction(D, real)
        loss_fake = _l1_reconstruction(D, fake.detach())
        loss_D = loss_real - k_t * loss_fake
        opt_D.zero_grad()
        loss_D.backward()
        opt_D.step()
        # (2) G step with a fresh z: minimise L_G = L(G(z_G)), through D (its weights still trainable).
        loss_G = _l1_reconstruction(D, G(z_G))
        opt_G.zero_grad()
        loss_G.backward()
        opt_G.step()
    elif update_order == "simultaneous":
        # carpedm20-TF: one z; both gradients at the current weights, then both steps. G's loss
        # goes first: its backward also fills D's .grad, which the D step's zero_grad discards.
        fake = G(z_D)
        loss_G = _l1_reconstruction(D, fake)
        opt_G.zero_grad()
        loss_G.backward()
        opt_G.step()
        loss_real = _l1_reconstruction(D, real)
        loss_fake = _l1_reconstruction(D, fake.detach())
        loss_D = loss_real - k_t * loss_fake
        opt_D.zero_grad()
        loss_D.backward()
        opt_D.step()
    else:
        raise ValueError(f"update_order={update_order!r}: must be alternating or simultaneous")
    # (3) equilibrium: k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z_G))), 0, 1)
    k_t = torch.clamp(k_t + lambda_k * (gamma * loss_real.detach() - loss_G.detach()), 0.0, 1.0)
    return {
        "k_t": k_t,
        "L_x": loss_real.detach(),
        "L_Gz": loss_G.detach(),
        "L_D": loss_D.detach(),
        "L_G": loss_G.detach(),
    }
