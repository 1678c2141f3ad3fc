"""Latent-space tools: slerp, inversion of real images to z (the paper's method), interpolation rows."""

from __future__ import annotations

import torch


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of a and b at fractions t (falls back to lerp when parallel)."""
    a_unit, b_unit = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((a_unit * b_unit).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    t = t.view(-1, 1)
    so = torch.sin(omega)
    if bool((so.abs() < 1e-6).any()):
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


def interpolation_rows(starts: torch.Tensor, ends: torch.Tensor, steps: int) -> torch.Tensor:
    """(R, Nz) x (R, Nz) -> (R * steps, Nz): each row slerps from its start to its end."""
    t = torch.linspace(0, 1, steps, device=starts.device)
    return torch.cat([slerp(s.expand(steps, -1), e.expand(steps, -1), t) for s, e in zip(starts, ends)])


def invert(
    generator: torch.nn.Module,
    images: torch.Tensor,
    latent_size: int,
    steps: int = 300,
    lr: float = 0.05,
    seed: int = 0,
) -> torch.Tensor:
    """z_r with G(z_r) close to each image: Adam on mean |x - G(z_r)|, z kept in [-1, 1] (paper, section 4)."""
    generator = generator.eval()
    start = torch.rand(images.shape[0], latent_size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    z = start.to(images.device).requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    requires_grad = [p.requires_grad for p in generator.parameters()]
    generator.requires_grad_(False)
    try:
        for _ in range(steps):
            # Sum over images of each one's mean error: every z gets its own image's gradient.
            loss = (generator(z) - images).abs().flatten(1).mean(1).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                z.clamp_(-1, 1)
    finally:
        for p, flag in zip(generator.parameters(), requires_grad):
            p.requires_grad_(flag)
    return z.detach()
