"""The dataset interface every source implements (the sharded reader too).

A dataset holds N images of one size as uint8, channels first. `batch(indices)`
returns them as a uint8 tensor (len(indices), C, H, W); `to_model_range` maps
them to floats in [-1, 1] on the device, where the training step wants them.
"""

from __future__ import annotations

from typing import Optional

import torch


class DataError(ValueError):
    """Missing, unreadable or unusable data (exit code 2); the message names the path."""


class ImageDataset:
    channels: int
    image_size: int
    labels: Optional[torch.Tensor] = None  # (N, K) per-image labels, when the source has them

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def label_rows(self, indices: torch.Tensor) -> torch.Tensor:
        """labels[indices] (a dataset may read only these rows)."""
        return self.labels[indices]

    def follow(self, sampler) -> None:
        """Read ahead of `sampler`'s position where that helps (remote shards: fetch them); else nothing."""


class InMemoryDataset(ImageDataset):
    """Images held as one uint8 tensor (N, C, H, W): the built-in sources."""

    def __init__(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None, name: str = ""):
        assert images.dtype == torch.uint8 and images.ndim == 4, images.shape
        assert images.shape[-1] == images.shape[-2], f"images must be square, got {tuple(images.shape)}"
        self.images, self.labels, self.name = images, labels, name
        self.channels, self.image_size = images.shape[1], images.shape[-1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices]


def to_model_range(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] on `device` (images centred on zero, as the BEGAN paper trains)."""
    return images.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
