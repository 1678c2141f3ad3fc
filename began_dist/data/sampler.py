"""The Contract's data-parallelism rule, with a position that survives resume.

Global batch b of an epoch is perm[b*B:(b+1)*B] of that epoch's permutation (B the
global batch; an incomplete last batch is dropped); rank r of W takes slice r of
it. The position is (epoch, offset in images), so a resume - also with a different
W - continues from the same image.
"""

from __future__ import annotations

import torch

from began_dist.data.dataset import DataError


class GlobalBatchSampler:
    def __init__(self, num_images: int, global_batch: int, seed: int, rank: int = 0, world: int = 1):
        assert global_batch % world == 0, "the global batch must split evenly across workers"
        assert num_images >= global_batch, "fewer images than one batch"
        self.num_images, self.global_batch, self.seed = num_images, global_batch, seed
        self.rank, self.world = rank, world
        self.epoch, self.offset = 0, 0
        self._perm_epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
            self._perm, self._perm_epoch = torch.randperm(self.num_images, generator=generator), epoch
        return self._perm

    def next_indices(self) -> torch.Tensor:
        """This rank's image indices for the next global batch."""
        if self.offset + self.global_batch > self.num_images:
            self.epoch, self.offset = self.epoch + 1, 0
        batch = self.permutation(self.epoch)[self.offset : self.offset + self.global_batch]
        self.offset += self.global_batch
        share = self.global_batch // self.world
        return batch[self.rank * share : (self.rank + 1) * share]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed, "num_images": self.num_images}

    def load_state_dict(self, state: dict) -> None:
        saved = int(state.get("num_images", self.num_images))
        if saved != self.num_images:  # other data: the saved position would silently mean other images
            raise DataError(f"the checkpoint's data position is for {saved} images, the dataset has {self.num_images}")
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self.seed, self._perm_epoch = int(state.get("seed", self.seed)), -1  # keep the saved order


class LatentSource:
    """z ~ U(-1, 1)^Nz drawn for the global batch from the shared seed, then sliced per rank."""

    def __init__(self, seed: int, latent_size: int, global_batch: int, rank: int = 0, world: int = 1):
        self.generator = torch.Generator().manual_seed(seed + 0x5EED)
        self.latent_size, self.global_batch, self.rank, self.world = latent_size, global_batch, rank, world

    def next(self, count: int, device: torch.device) -> torch.Tensor:
        """`count` latent batches for this rank: (count, B / W, Nz)."""
        z = torch.rand(count, self.global_batch, self.latent_size, generator=self.generator) * 2 - 1
        share = self.global_batch // self.world
        return z[:, self.rank * share : (self.rank + 1) * share].to(device, non_blocking=True)

    def state_dict(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def fixed_latents(seed: int, count: int, latent_size: int) -> torch.Tensor:
    """The fixed z of the sample grids: the same for every run with this seed."""
    generator = torch.Generator().manual_seed(seed + 0xF1CED)
    return torch.rand(count, latent_size, generator=generator) * 2 - 1
