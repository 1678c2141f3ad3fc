"""Image grids: model-range tensors in [-1, 1] to uint8 grids and PNG files."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

from began_dist import storage


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats (linear outputs are clipped for display) -> uint8 [0, 255]."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def make_grid(images: torch.Tensor, columns: int = 0, pad: int = 2) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> one uint8 (C, H', W') grid with `pad` pixels of padding."""
    pixels = to_uint8(images)
    count, channels, height, width = pixels.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = torch.zeros(channels, rows * (height + pad) + pad, columns * (width + pad) + pad, dtype=torch.uint8)
    for i in range(count):
        top, left = pad + (i // columns) * (height + pad), pad + (i % columns) * (width + pad)
        grid[:, top : top + height, left : left + width] = pixels[i]
    return grid


def grid_image(images: torch.Tensor, columns: int = 0, scale: int = 1) -> Image.Image:
    grid = make_grid(images, columns).permute(1, 2, 0).numpy()
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else np.ascontiguousarray(grid))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image


def save_grid(images: torch.Tensor, path: str, columns: int = 0, scale: int = 1) -> str:
    """Write the grid as a PNG at `path` (a run directory's file: through began_dist.storage, atomically)."""
    buffer = io.BytesIO()
    grid_image(images, columns, scale).save(buffer, format="PNG")
    storage.write_bytes(path, buffer.getvalue())
    return path
