"""The O(1)-memory shuffle: a keyed bijection per epoch, the data-parallel rule over it, old runs' order."""

import io

import numpy as np
import pytest
import torch

from began_dist.data import DataError
from began_dist.data.sampler import FeistelPermutation, GlobalBatchSampler, LatentSource, batch_digest


@pytest.mark.parametrize("n", [*range(1, 18), 31, 32, 33, 50, 63, 64, 65, 100, 255, 257, 1000, 4097])
def test_feistel_is_a_bijection_exhaustively(n):
    for seed, epoch in ((0, 0), (1, 0), (0, 1), (123456789, 7)):
        values = FeistelPermutation(n, seed, epoch)(np.arange(n))
        assert values.dtype == np.int64 and np.array_equal(np.sort(values), np.arange(n)), (n, seed, epoch)


def test_feistel_depends_only_on_seed_and_epoch_and_shuffles():
    n = 10_000
    first = FeistelPermutation(n, 5, 2)(np.arange(n))
    assert np.array_equal(FeistelPermutation(n, 5, 2)(np.arange(n)), first)  # a fresh object, same keys
    assert np.array_equal(FeistelPermutation(n, 5, 2)(np.arange(n)[::-1])[::-1], first)  # per position, any order
    for other in (FeistelPermutation(n, 5, 3), FeistelPermutation(n, 6, 2)):
        assert (other(np.arange(n)) == first).mean() < 0.01
    assert abs(np.corrcoef(first, np.arange(n))[0, 1]) < 0.05  # no trace of the identity
    assert abs(np.corrcoef(first[:-1], first[1:])[0, 1]) < 0.05  # neighbours unrelated


def test_shuffle_state_is_constant_in_n():
    for n in (10**6, 10**9, 10**12):
        sampler = GlobalBatchSampler(n, 64, seed=0, rank=1, world=4)
        indices = sampler.next_indices()
        assert sampler.state_bytes <= 1 << 20  # the goal: <= 1 MB per worker at any N
        assert len(indices) == 16 and 0 <= int(indices.min()) <= int(indices.max()) < n


def global_batches(world, steps, n=50, batch=12, seed=3, state=None):
    ranks = [GlobalBatchSampler(n, batch, seed, rank=r, world=world) for r in range(world)]
    for sampler in ranks:
        if state is not None:
            sampler.load_state_dict(state)
    return [torch.cat([s.next_indices() for s in ranks]) for _ in range(steps)], ranks[0].state_dict()


def test_same_global_batches_for_any_world_size_and_across_a_resume():
    """50 images, batch 12: 4 batches an epoch; 10 steps cross two epoch ends."""
    straight, _ = global_batches(1, 10)
    for world in (2, 3):
        assert all(torch.equal(a, b) for a, b in zip(global_batches(world, 10)[0], straight))
    for cut, world_after in ((3, 3), (4, 2), (6, 1)):
        head, state = global_batches(2, cut)
        state = torch.load(io.BytesIO(save(state)), weights_only=True)  # as a checkpoint carries it
        tail, _ = global_batches(world_after, 10 - cut, state=state)
        assert all(torch.equal(a, b) for a, b in zip(head + tail, straight)), (cut, world_after)
    epoch = torch.cat(straight[:4]).tolist()
    assert len(set(epoch)) == 48 and set(epoch) != set(torch.cat(straight[4:8]).tolist())  # 2 dropped, by epoch


def save(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def randperm_order(n, seed, epoch):
    """The order of the sampler before feistel-v1, which runs started then must keep."""
    return torch.randperm(n, generator=torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63))


def test_a_checkpoint_from_before_feistel_resumes_with_its_old_order():
    old_state = {"epoch": 1, "offset": 24, "seed": 3, "num_images": 50}  # what the randperm sampler saved
    expected = torch.cat([randperm_order(50, 3, 1)[24:48], randperm_order(50, 3, 2)[:24]])
    for world in (1, 2, 3):
        batches, state = global_batches(world, 4, state=old_state)
        assert torch.equal(torch.cat(batches), expected), world
        assert state == {"epoch": 2, "offset": 24, "seed": 3, "num_images": 50, "shuffle": "randperm"}
    again, _ = global_batches(2, 1, state=state)  # a checkpoint of that resumed run: still the old order
    assert torch.equal(again[0], randperm_order(50, 3, 2)[24:36])
    assert not torch.equal(global_batches(1, 4, state={**old_state, "shuffle": "feistel-v1"})[0][0], expected[:12])


def test_an_unknown_shuffle_is_refused():
    with pytest.raises(DataError, match="'feistel-v9'"):
        GlobalBatchSampler(50, 8, 0).load_state_dict({"epoch": 0, "offset": 0, "num_images": 50,
                                                      "shuffle": "feistel-v9"})


def test_batch_digest_is_the_same_for_every_worker_count():
    """stats.jsonl's batch_digest: each step's global images and latents, whatever the worker count."""
    digests = {}
    for world in (1, 2, 3):
        for rank in range(world):
            sampler, latents = GlobalBatchSampler(100, 12, 7, rank, world), LatentSource(7, 5, 12, rank, world)
            steps = []
            for _ in range(20):  # past an epoch boundary (8 batches of 12 per epoch of 100)
                position = sampler.position
                sampler.next_indices()
                latents.next(2, torch.device("cpu"))
                steps.append(batch_digest(sampler.global_batch_at(position), latents.last))
            digests[world, rank] = steps
    assert len({tuple(steps) for steps in digests.values()}) == 1
    assert len(set(digests[1, 0])) == 20  # and every step differs
