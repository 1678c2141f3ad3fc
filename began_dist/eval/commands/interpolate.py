"""`began-dist interpolate RUN_DIR A B`: slerp between the latents of two real images.

A and B are image files or single characters (rendered as the run's glyphs). Writes
into OUT (default RUN_DIR/latent/):
  interpolate-<latent>.png  A, then `steps` decodes of slerp(z_A, z_B) (the first and last
                            are A's and B's reconstructions), then B
  mirror-<latent>.png       one row per input: x, slerp from z(x) to z(flip(x)), flip(x)
"""

from __future__ import annotations

from typing import Optional

from began_dist import storage
from began_dist.eval.commands.latent import INVERT_STEPS, framed_interpolation, latent_codec, load_inputs
from began_dist.images import save_grid
from began_dist.train.runs import load_run


def write_interpolation(
    run_dir: str,
    a: str,
    b: str,
    steps: int = 10,  # decodes between (and including) the two reconstructions
    latent: str = "encoder",  # encoder | invert (eval/commands/latent.py)
    out: Optional[str] = None,  # output directory; default RUN_DIR/latent
    step: Optional[int] = None,  # checkpoint step; default the latest
    invert_steps: int = INVERT_STEPS,  # Adam steps per inversion (--latent invert)
) -> list[str]:
    cfg, family, _ = load_run(run_dir, step)
    codec = latent_codec(family, latent, invert_steps)
    out = out or storage.join(run_dir, "latent")
    real = load_inputs(cfg, [a, b], family.device)
    pair = framed_interpolation(codec, real[:1], real[1:], steps)
    mirror = framed_interpolation(codec, real, real.flip(-1), steps)
    return [
        save_grid(pair, storage.join(out, f"interpolate-{latent}.png"), steps + 2, scale=2),
        save_grid(mirror, storage.join(out, f"mirror-{latent}.png"), steps + 2, scale=2),
    ]
