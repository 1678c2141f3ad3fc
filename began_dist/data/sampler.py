"""The data-parallel rule of docs/design.md, with a position that survives resume.

Global batch b of an epoch is perm[b*B:(b+1)*B] of that epoch's permutation (B the
global batch; an incomplete last batch is dropped); rank r of W takes slice r of
it. The position is (epoch, offset in images), so a resume - also with a different
W - continues from the same image.

The permutation is never stored: perm[i] is computed for the positions a batch needs
by a keyed bijection on [0, N) (`FeistelPermutation`, keyed by (seed, epoch)), so the
shuffle state is a few round keys at any N (docs/data.md, "Shuffle"). Runs whose
checkpoint predates it keep `torch.randperm` order to their end (`SHUFFLES`).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from began_dist.data.dataset import DataError

FEISTEL = "feistel-v1"
RANDPERM = "randperm"  # the order of runs started before FEISTEL: a checkpoint without a `shuffle` key
SHUFFLES = (FEISTEL, RANDPERM)
AHEAD = 1 << 13  # Feistel indices computed at once, for this rank's next batches: amortises numpy's per-call cost


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (Steele, Lea, Flood, OOPSLA 2014): a bijective 64-bit avalanche mix."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class FeistelPermutation:
    """A keyed pseudo-random bijection on [0, n), evaluated per position in O(1) memory.

    A Feistel network is a bijection on k-bit integers whatever its round function
    (Luby and Rackoff, SIAM J. Comput. 17(2), 1988); k is the smallest width with
    2^k >= n, and the halves may differ in width by one bit: each round maps
    (L, R) -> (R, L xor F(R)), which swaps the widths and stays invertible. Values
    that land in [n, 2^k) are permuted again until they fall inside ("cycle walking",
    Black and Rogaway, CT-RSA 2002): the result is a bijection on [0, n), and since
    2^k < 2n, fewer than two rounds of walking are needed on average.
    """

    ROUNDS = 6

    def __init__(self, n: int, seed: int, epoch: int):
        assert n >= 1
        self.n = n
        self.bits = max(1, (n - 1).bit_length())
        digest = hashlib.blake2b(f"{FEISTEL}:{seed}:{epoch}".encode(), digest_size=8 * self.ROUNDS).digest()
        self.keys = np.frombuffer(digest, "<u8").astype(np.uint64)  # little-endian: the same keys on every host

    @property
    def state_bytes(self) -> int:
        return self.keys.nbytes

    def _rounds(self, x: np.ndarray) -> np.ndarray:
        left_bits, right_bits = (self.bits + 1) // 2, self.bits // 2
        for key in self.keys:
            left, right = x >> np.uint64(right_bits), x & np.uint64((1 << right_bits) - 1)
            mixed = (left ^ _mix(right ^ key)) & np.uint64((1 << left_bits) - 1)
            x = (right << np.uint64(left_bits)) | mixed
            left_bits, right_bits = right_bits, left_bits
        return x

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """perm[positions], int64; positions in [0, n)."""
        x = self._rounds(np.asarray(positions, dtype=np.uint64))
        outside = np.nonzero(x >= self.n)[0]
        while len(outside):  # ends: the cycle through a position < n comes back below n
            x[outside] = self._rounds(x[outside])
            outside = outside[x[outside] >= self.n]
        return x.astype(np.int64)


class GlobalBatchSampler:
    def __init__(self, num_images: int, global_batch: int, seed: int, rank: int = 0, world: int = 1):
        assert global_batch % world == 0, "the global batch must split evenly across workers"
        assert num_images >= global_batch, "fewer images than one batch"
        self.num_images, self.global_batch, self.seed = num_images, global_batch, seed
        self.rank, self.world = rank, world
        self.epoch, self.offset = 0, 0
        self.shuffle = FEISTEL
        self._perm_epoch, self._perm = -1, None
        self._ahead = (-1, 0, np.empty((0, 0), np.int64))  # (epoch, offset, this rank's indices of the next batches)

    def _order(self, epoch: int):
        """This epoch's order as a callable positions -> image indices (built once per epoch)."""
        if self._perm_epoch != epoch:
            if self.shuffle == FEISTEL:
                self._perm = FeistelPermutation(self.num_images, self.seed, epoch)
            else:  # the pre-Feistel order, exactly as those runs drew it
                generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
                self._perm = torch.randperm(self.num_images, generator=generator).numpy()
            self._perm_epoch = epoch
        return self._perm if self.shuffle == FEISTEL else self._perm.__getitem__

    def permutation(self, epoch: int) -> torch.Tensor:
        """The whole permutation of `epoch` (N int64: for tests and inspection, not for training)."""
        return torch.from_numpy(self._order(epoch)(np.arange(self.num_images)))

    @property
    def state_bytes(self) -> int:
        """Memory the shuffle holds between batches."""
        self._order(self.epoch)
        return self._perm.state_bytes + self._ahead[2].nbytes if self.shuffle == FEISTEL else self._perm.nbytes

    def _feistel_share(self, epoch: int, offset: int, share: int) -> np.ndarray:
        """This rank's indices of the batch at (epoch, offset), from those of its next AHEAD // share batches."""
        start_epoch, start, ahead = self._ahead
        row, late = divmod(offset - start, self.global_batch)
        if start_epoch != epoch or late or not 0 <= row < len(ahead):
            count = max(1, min(AHEAD // share, (self.num_images - offset) // self.global_batch))
            first = offset + self.rank * share + np.arange(count)[:, None] * self.global_batch
            ahead = self._order(epoch)((first + np.arange(share)).reshape(-1)).reshape(count, share)
            self._ahead, row = (epoch, offset, ahead), 0
        return ahead[row]

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.offset

    def batch_at(self, position: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        """(this rank's image indices for the global batch at `position`, the position after it); no state moves."""
        epoch, offset = position
        if offset + self.global_batch > self.num_images:
            epoch, offset = epoch + 1, 0
        share = self.global_batch // self.world
        if self.shuffle == FEISTEL:
            indices = self._feistel_share(epoch, offset, share)
        else:
            indices = self._order(epoch)(np.arange(offset + self.rank * share, offset + (self.rank + 1) * share))
        return torch.from_numpy(indices.copy()), (epoch, offset + self.global_batch)

    def global_batch_at(self, position: tuple[int, int]) -> np.ndarray:
        """Every rank's image indices of the global batch at `position`, in rank order (for batch digests)."""
        epoch, offset = position
        if offset + self.global_batch > self.num_images:
            epoch, offset = epoch + 1, 0
        return self._order(epoch)(np.arange(offset, offset + self.global_batch))

    def next_indices(self) -> torch.Tensor:
        """This rank's image indices for the next global batch."""
        indices, (self.epoch, self.offset) = self.batch_at(self.position)
        return indices

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed, "num_images": self.num_images,
                "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        saved = int(state.get("num_images", self.num_images))
        if saved != self.num_images:  # other data: the saved position would silently mean other images
            raise DataError(f"the checkpoint's data position is for {saved} images, the dataset has {self.num_images}")
        shuffle = state.get("shuffle", RANDPERM)  # no marker: saved by the randperm sampler; that run keeps its order
        if shuffle not in SHUFFLES:
            raise DataError(f"the checkpoint's data order is {shuffle!r}; this version knows {', '.join(SHUFFLES)}")
        self.epoch, self.offset, self.shuffle = int(state["epoch"]), int(state["offset"]), shuffle
        self.seed, self._perm_epoch = int(state.get("seed", self.seed)), -1  # keep the saved order
        self._ahead = (-1, 0, self._ahead[2][:0])


class LatentSource:
    """z ~ U(-1, 1)^Nz drawn for the global batch from the shared seed, then sliced per rank."""

    def __init__(self, seed: int, latent_size: int, global_batch: int, rank: int = 0, world: int = 1):
        self.generator = torch.Generator().manual_seed(seed + 0x5EED)
        self.latent_size, self.global_batch, self.rank, self.world = latent_size, global_batch, rank, world
        self.last = torch.empty(0)  # the global latents of the last draw (every rank's), for batch digests

    def next(self, count: int, device: torch.device) -> torch.Tensor:
        """`count` latent batches for this rank: (count, B / W, Nz)."""
        z = self.last = torch.rand(count, self.global_batch, self.latent_size, generator=self.generator) * 2 - 1
        share = self.global_batch // self.world
        return z[:, self.rank * share : (self.rank + 1) * share].to(device, non_blocking=True)

    def state_dict(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def batch_digest(indices: np.ndarray, latents: torch.Tensor) -> str:
    """A step's global batch (image indices and latents) in 16 hex digits: equal for every worker count."""
    digest = hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    digest.update(latents.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def fixed_latents(seed: int, count: int, latent_size: int) -> torch.Tensor:
    """The fixed z of the sample grids: the same for every run with this seed."""
    generator = torch.Generator().manual_seed(seed + 0xF1CED)
    return torch.rand(count, latent_size, generator=generator) * 2 - 1
