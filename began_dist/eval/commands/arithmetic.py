"""`began-dist arithmetic RUN_DIR --triples FILE`: "A - B + C" in latent space (tf-vaegan's figure, docs/design.md).

Each line of FILE is three characters ("酪鉻鉸", rendered as the run's glyphs) or three
whitespace-separated image paths; blank lines and lines starting with # are skipped.
For each triple, OUT/arithmetic-<latent>-<NN>.png (default OUT = RUN_DIR/latent) holds
four panels, one per row:
  1. the inputs A, B, C
  2. their reconstructions
  3. decodes of a (z_A - z_B + z_C) for a in 0.25, 0.5, 1, 2, 3
  4. A - B + C in pixel space (clipped to the image range)
With A = 酪 (酉 + 各), B = 鉻 (金 + 各), C = 鉸 (金 + 交) the answer should show 酉 + 交,
a character that does not exist.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Optional

import torch

from began_dist import storage
from began_dist.config import ConfigError
from began_dist.eval.commands.latent import INVERT_STEPS, LatentCodec, latent_codec, load_inputs
from began_dist.images import save_grid
from began_dist.train.runs import load_run

COEFFICIENTS = (0.25, 0.5, 1.0, 2.0, 3.0)  # a in a (z_A - z_B + z_C), the seed's
DEFAULT_TRIPLES = str(resources.files("began_dist.eval").joinpath("triples_default.txt"))


def read_triples(path: str) -> list[list[str]]:
    """[[A, B, C], ...] from FILE; ConfigError naming the line when one is neither form."""
    if not os.path.isfile(path):
        raise ConfigError(f"--triples: no such file {path!r}")
    triples = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            tokens = line.split()
            items = tokens if len(tokens) == 3 else list("".join(tokens))
            if len(items) != 3:
                raise ConfigError(f"--triples {path}, line {number}: {line!r} is not three characters or three paths")
            triples.append(items)
    if not triples:
        raise ConfigError(f"--triples {path}: no triples")
    return triples


def arithmetic_panels(codec: LatentCodec, images: torch.Tensor) -> torch.Tensor:
    """(3, C, H, W) inputs A, B, C -> the 4 x 5 grid of the figure, empty cells at the background (-1)."""
    z = codec.encode(images, 0)
    combined = z[0] - z[1] + z[2]
    decodes = codec.decode(torch.stack([a * combined for a in COEFFICIENTS]))
    pixel = (images[0] - images[1] + images[2]).clamp(-1, 1)[None]
    width = len(COEFFICIENTS)

    def row(panel: torch.Tensor) -> torch.Tensor:
        blank = torch.full((width - len(panel), *images.shape[1:]), -1.0, device=images.device)
        return torch.cat([panel, blank])

    return torch.cat([row(images), row(codec.decode(z)), decodes, row(pixel)])


def write_arithmetic(
    run_dir: str,
    triples: str = DEFAULT_TRIPLES,  # the triples file
    latent: str = "encoder",  # encoder | invert (eval/commands/latent.py)
    out: Optional[str] = None,  # output directory; default RUN_DIR/latent
    step: Optional[int] = None,  # checkpoint step; default the latest
    invert_steps: int = INVERT_STEPS,  # Adam steps per inversion (--latent invert)
) -> list[str]:
    items = read_triples(triples)
    cfg, family, _ = load_run(run_dir, step)
    codec = latent_codec(family, latent, invert_steps)
    out = out or storage.join(run_dir, "latent")
    written = []
    for number, triple in enumerate(items):
        panels = arithmetic_panels(codec, load_inputs(cfg, triple, family.device))
        path = storage.join(out, f"arithmetic-{latent}-{number:02d}.png")
        written.append(save_grid(panels, path, len(COEFFICIENTS), scale=3))
    return written
