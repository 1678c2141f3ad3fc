"""`began-dist decompose RUN_DIR`: a multigen run's parts, recombinations and measurements.

Writes into OUT (default RUN_DIR/decompose/step-XXXXXXXX/):
  parts.png      per real image: the image, each generator's part G_k(E(x)_k) from D's
                 encoder code, their gated sum, and D's reconstruction
  swap_<k>.png   z_k swapped between samples: row i keeps sample i's other slices,
                 column j brings sample j's z_k (every component on); swap_shared.png
                 the same for the shared slice z_s (model.multigen.shared_z)
  switch.png     per z: every non-empty y in {0, 1}^K, the never-seen ones too
  alone.png      samples of each generator alone, one row of G_k(z_k) per k
The measurements (`component_iou`, `heldout_statistics`) serve benchmarks/multigen_quality.py.
CRS labels are y = [cross, square], so part 0 is the cross and part 1 the square.
"""

from __future__ import annotations

import itertools
from typing import Optional

import numpy as np
import torch

from began_dist import storage
from began_dist.data import build_dataset, sources
from began_dist.data.dataset import to_model_range
from began_dist.eval.metrics.swd import swd
from began_dist.images import save_grid, to_uint8
from began_dist.models.multigen import label_combinations, part_images
from began_dist.train.runs import load_run

ROWS = 8  # samples per figure
INK = 0.5  # a pixel belongs to a part when its ink exceeds this
MIN_AREA = 4  # pixels of ink below which an image has no measurable shape


def uniform(count: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(count, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def real_examples(dataset, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` training images (uint8) and their labels, every label combination in turn."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    labels = dataset.labels[order]
    groups = [order[(labels == y).all(1)] for y in labels.unique(dim=0)]
    picked = torch.stack([group[i // len(groups)] for i, group in zip(range(count), itertools.cycle(groups))])
    return dataset.batch(picked), dataset.labels[picked]


def real_parts(family, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, K, C, H, W) ink parts G_k(E(x)_k) of uint8 images, through D's encoder codes."""
    code = family.encode(to_model_range(images, family.device))
    return family.parts(code) * labels.to(family.device, torch.float32)[:, :, None, None, None]


def write_parts(family, images, labels, path: str) -> str:
    x = to_model_range(images, family.device)
    parts = real_parts(family, images, labels)
    y = labels.to(family.device, torch.float32)
    columns = [x[:, None], part_images(parts), family.compose(parts, y)[:, None], family.reconstruct(x, y)[:, None]]
    return save_grid(torch.cat(columns, 1).flatten(0, 1), path, parts.shape[1] + 3, scale=2)


def write_swaps(family, z: torch.Tensor, out: str) -> list[str]:
    """One grid per latent slice (swap_shared, if any, then swap_<k> per generator): the slice of
    column j swapped into row i's z."""
    names = (["shared"] if family.shared_z else []) + [str(k) for k in range(len(family.z_sizes))]
    sizes = ([family.shared_z] if family.shared_z else []) + family.z_sizes
    paths, start, n = [], 0, len(z)
    for name, size in zip(names, sizes):
        grid = z[:, None].repeat(1, n, 1)
        grid[:, :, start : start + size] = z[None, :, start : start + size]
        paths.append(save_grid(family.generate(grid.flatten(0, 1)), storage.join(out, f"swap_{name}.png"), n, scale=2))
        start += size
    return paths


def write_switch(family, z: torch.Tensor, path: str) -> str:
    combos = label_combinations(len(family.z_sizes))
    images = family.generate(z.repeat_interleave(len(combos), 0), combos.repeat(len(z), 1))
    return save_grid(images, path, len(combos), scale=2)


def write_alone(family, z: torch.Tensor, path: str) -> str:
    parts = part_images(family.parts(z))  # (N, K, C, H, W)
    return save_grid(parts.transpose(0, 1).flatten(0, 1), path, len(z), scale=2)


def decompose(run_dir: str, out: Optional[str] = None, step: Optional[int] = None, seed: int = 0) -> list[str]:
    """Write the four kinds of figure for a multigen run; returns their paths."""
    cfg, family, step = load_run(run_dir, step)
    if cfg.model.family != "multigen":
        raise ValueError(f"{run_dir}: model.family={cfg.model.family}; decompose needs a multigen run")
    out = out or storage.join(run_dir, "decompose", f"step-{step:08d}")
    images, labels = real_examples(build_dataset(cfg), ROWS, seed)
    z = uniform(ROWS, family.latent_size, seed)
    return [
        write_parts(family, images, labels, storage.join(out, "parts.png")),
        *write_swaps(family, z, out),
        write_switch(family, z, storage.join(out, "switch.png")),
        write_alone(family, uniform(2 * ROWS, family.latent_size, seed + 1), storage.join(out, "alone.png")),
    ]


def write_overview(family, images, labels, heldout, path: str, component: int = 0) -> str:
    """One figure, 8 columns: rows of (real, its parts, their sum) x 2, two rows of G_component(z) alone,
    one row of held-out real examples of that component."""
    x = to_model_range(images, family.device)
    parts = real_parts(family, images, labels)
    y = labels.to(family.device, torch.float32)
    per_image = torch.cat([x[:, None], part_images(parts), family.compose(parts, y)[:, None]], 1)
    decomposed = per_image[: 8 // per_image.shape[1] * 2].flatten(0, 1)
    alone = part_images(family.parts(uniform(16, family.latent_size, 1))[:, component])
    rows = [decomposed, alone, to_model_range(heldout[:8], family.device)]
    return save_grid(torch.cat(rows), path, 8, scale=3)


# -- measurements ---------------------------------------------------------------------------
def component_iou(family, images, labels, masks) -> list[float]:
    """Per component: mean IoU of the part's ink (> 0.5) with the true mask, over images that have it."""
    ious = [[] for _ in family.z_sizes]
    for chunk in range(0, len(images), 256):
        rows = slice(chunk, chunk + 256)
        found = real_parts(family, images[rows], labels[rows]).cpu()[:, :, 0] > INK
        truth = masks[rows] > 127
        inter, union = (found & truth).flatten(2).sum(2), (found | truth).flatten(2).sum(2)
        for k in range(len(ious)):
            present = labels[rows, k].bool()
            ious[k] += (inter[present, k] / union[present, k].clamp_min(1)).tolist()
    return [float(np.mean(values)) if values else float("nan") for values in ious]


def heldout_crosses(size: int, count: int) -> torch.Tensor:
    """uint8 (count, 1, size, size): CRS crosses alone (the held-out split), evenly spread over variants."""
    images, _, _ = sources.crs_render(sources.crs_grid(["cross"], count), size)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def shape_measures(ink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(size, thickness) per image of a cross (N, H, W): size = sqrt(3) x RMS radius of the ink
    (the arm half-length s of a thin cross), thickness = ink area / (4 s) (the bar width 2d).
    Images with less ink than MIN_AREA pixels (no shape to measure) give NaN."""
    mask = (ink > INK).float()
    area = mask.flatten(1).sum(1)
    ys, xs = torch.meshgrid(torch.arange(ink.shape[1]), torch.arange(ink.shape[2]), indexing="ij")
    weight = mask / area.clamp_min(1)[:, None, None]
    cy, cx = (weight * ys).flatten(1).sum(1), (weight * xs).flatten(1).sum(1)
    radius2 = (ys[None] - cy[:, None, None]) ** 2 + (xs[None] - cx[:, None, None]) ** 2
    size = (3 * (weight * radius2).flatten(1).sum(1)).sqrt()
    thickness = area / (4 * size.clamp_min(1))
    empty = area < MIN_AREA
    return size.masked_fill(empty, float("nan")), thickness.masked_fill(empty, float("nan"))


def _nan_var(values: torch.Tensor) -> float:
    values = values[~values.isnan()]
    return float(values.var()) if len(values) > 1 else float("nan")


def heldout_statistics(family, component: int, real: torch.Tensor, seed: int = 0) -> dict:
    """G_component alone against the held-out images `real` (uint8): mean, variance, size, thickness, SWD."""
    z = uniform(len(real), family.latent_size, seed)
    generated = family.parts(z)[:, component, 0].clamp(0, 1).cpu()  # ink (N, H, W)
    true = real[:, 0].float() / 255
    gen_size, gen_thick = shape_measures(generated)
    true_size, true_thick = shape_measures(true)
    as_images = to_uint8(part_images(generated[:, None]))
    return {
        "l1_mean": float((generated.mean(0) - true.mean(0)).abs().mean()),
        "var_ratio_pixels": float(generated.var(0).sum() / true.var(0).sum()),
        "var_ratio_size": _nan_var(gen_size) / _nan_var(true_size),
        "var_ratio_thickness": _nan_var(gen_thick) / _nan_var(true_thick),
        "empty_fraction": float(gen_size.isnan().float().mean()),  # no measurable shape
        "swd": swd(as_images, real, seed)["swd"],
    }
