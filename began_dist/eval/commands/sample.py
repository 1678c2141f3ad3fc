"""`began-dist sample`: pictures from a run's checkpoint.

Writes into OUT (default RUN_DIR/samples/step-XXXXXXXX/):
  grid.png           G(z) for N random z
  interpolation.png  slerp between pairs of random z, 10 steps a row
  mirror.png         a real image and its horizontal flip, each inverted to z_r
                     (Adam on |x - G(z_r)|), slerped; real images at the ends
                     (`began-dist interpolate` does this through an encoder too)
  g_vs_decoder.png   Heumi/BEGAN-tensorflow's Fig. 4 (docs/design.md): G(z) (left) next to D's decoder fed the
                     same z (right); only when Nz = Nh
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from began_dist import storage
from began_dist.config import ConfigError
from began_dist.data import load_examples
from began_dist.data.dataset import to_model_range
from began_dist.eval.commands.latent import framed_interpolation, interpolation_rows, latent_codec
from began_dist.images import save_grid
from began_dist.train.runs import load_run

STEPS = 10  # images per interpolation row


def write_samples(
    run_dir: str,
    out: Optional[str] = None,
    n: int = 64,
    seed: int = 0,
    rows: int = 4,
    step: Union[int, str, None] = None,
) -> list[str]:
    cfg, family, step = load_run(run_dir, step)
    if getattr(family, "needs_labels", False):
        raise ConfigError(f"{run_dir}: model.family={cfg.model.family}; its pictures come from began-dist decompose")
    out = out or storage.join(run_dir, "samples", f"step-{step:08d}")
    generator = torch.Generator().manual_seed(seed)
    nz = family.latent_size

    def uniform(count: int) -> torch.Tensor:
        return torch.rand(count, nz, generator=generator) * 2 - 1

    written = [save_grid(family.generate(uniform(n)), storage.join(out, "grid.png"), scale=2)]
    pairs = interpolation_rows(uniform(rows), uniform(rows), STEPS)
    written.append(save_grid(family.generate(pairs), storage.join(out, "interpolation.png"), STEPS, scale=2))
    written.append(_mirror(cfg, family, rows, seed, storage.join(out, "mirror.png")))
    if cfg.model.nz == cfg.model.nh and hasattr(family.D, "decoder"):  # BEGAN's auto-encoder D
        z = uniform(min(n, 32))
        with torch.no_grad():
            side_by_side = torch.stack([family.generate(z), family.D.decoder(z)], dim=1).flatten(0, 1)
        written.append(save_grid(side_by_side, storage.join(out, "g_vs_decoder.png"), 8, scale=2))
    return written


def _mirror(cfg, family, rows: int, seed: int, path: str) -> str:
    """Real image -> z_r, its mirror -> z_r', slerp between them; the real pair at the row ends."""
    real = to_model_range(load_examples(cfg, rows), family.device)
    framed = framed_interpolation(latent_codec(family, "invert"), real, real.flip(-1), STEPS, seed)
    return save_grid(framed, path, STEPS + 2, scale=2)
