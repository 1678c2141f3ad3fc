"""The prefetcher reads ahead in a thread and changes no batch, no position, no checkpoint."""

import threading

import pytest
import torch

from began_dist.cli import main
from began_dist.data import DataError, ShardedDataset
from began_dist.data.dataset import InMemoryDataset, to_model_range
from began_dist.data.prefetch import Prefetcher
from began_dist.data.sampler import GlobalBatchSampler

CPU = torch.device("cpu")
COUNT, BATCH = 40, 12  # 3 batches an epoch: 10 steps cross three epoch ends


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Real HDF5 shards with labels (40 CRS images, 3 shards)."""
    out = tmp_path_factory.mktemp("crs")
    assert main(["prepare", "shapes", str(out), "--format", "hdf5", "--size", "16", "--shards", "3",
                 "--limit", str(COUNT)]) == 0
    return ShardedDataset(str(out / "train"))


def plain(dataset, sampler, steps):
    """What the loop does without a prefetcher: (indices, real, labels, sampler state after) per step."""
    out = []
    for _ in range(steps):
        indices = sampler.next_indices()
        out.append((indices, to_model_range(dataset.batch(indices), CPU), dataset.labels[indices],
                    sampler.state_dict()))
    return out


def prefetched(prefetcher, steps):
    return [(*prefetcher.next(), prefetcher.sampler.state_dict()) for _ in range(steps)]


def assert_same(got, expected):
    assert len(got) == len(expected)
    for (i, real, labels, state), (i2, real2, labels2, state2) in zip(got, expected):
        assert torch.equal(i, i2) and torch.equal(real, real2) and torch.equal(labels, labels2) and state == state2


@pytest.mark.parametrize("world, depth", [(1, 2), (2, 3), (1, 0)])
def test_prefetch_changes_no_batch_and_the_state_is_the_consumed_one(dataset, world, depth):
    for rank in range(world):
        expected = plain(dataset, GlobalBatchSampler(COUNT, BATCH, 4, rank, world), 10)
        with Prefetcher(dataset, GlobalBatchSampler(COUNT, BATCH, 4, rank, world), CPU, depth, labels=True) as ahead:
            assert_same(prefetched(ahead, 10), expected)  # the state after each step: that batch, not read-ahead


def test_a_checkpoint_taken_while_reading_ahead_resumes_exactly(dataset):
    expected = plain(dataset, GlobalBatchSampler(COUNT, BATCH, 4), 10)
    with Prefetcher(dataset, GlobalBatchSampler(COUNT, BATCH, 4), CPU, depth=3, labels=True) as ahead:
        head = prefetched(ahead, 4)
        state = ahead.sampler.state_dict()  # the thread has read batches 5.. by now
    for world in (1, 2):
        ranks = [GlobalBatchSampler(COUNT, BATCH, 4, r, world) for r in range(world)]
        parts = []
        for sampler in ranks:
            sampler.load_state_dict(state)
            with Prefetcher(dataset, sampler, CPU, depth=2, labels=True) as ahead:
                parts.append(prefetched(ahead, 6))
        tail = [(torch.cat([p[s][0] for p in parts]), torch.cat([p[s][1] for p in parts]),
                 torch.cat([p[s][2] for p in parts]), parts[0][s][3]) for s in range(6)]
        assert_same(head + tail, expected)


def test_repositioning_the_sampler_drops_what_was_read_ahead(dataset):
    expected = plain(dataset, GlobalBatchSampler(COUNT, BATCH, 4), 6)
    sampler = GlobalBatchSampler(COUNT, BATCH, 4)
    with Prefetcher(dataset, sampler, CPU, depth=2, labels=True) as ahead:
        first = prefetched(ahead, 5)
        sampler.load_state_dict(first[1][3])  # back to after step 2, as a restore in the same process would
        assert_same(first[:2] + prefetched(ahead, 4), expected)


class Failing(InMemoryDataset):
    """Images that cannot be read from the 4th batch on (as a shard gone bad on its disk)."""

    def __init__(self, fail_at):
        super().__init__(torch.arange(COUNT * 16, dtype=torch.uint8).reshape(COUNT, 1, 4, 4))
        self.calls, self.fail_at = 0, fail_at

    def batch(self, indices):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise DataError("shard-00002.h5: unreadable")
        return super().batch(indices)


def test_an_error_in_the_thread_reaches_the_consumer_at_its_batch():
    dataset, sampler = Failing(fail_at=4), GlobalBatchSampler(COUNT, BATCH, 4)
    with Prefetcher(dataset, sampler, CPU, depth=2) as ahead:
        for _ in range(3):
            ahead.next()
        state = sampler.state_dict()
        with pytest.raises(DataError, match="shard-00002.h5: unreadable"):
            ahead.next()
        assert sampler.state_dict() == state  # the failed batch was not consumed
        dataset.fail_at = 10**9
        retried = ahead.next().indices  # from the same position
        assert torch.equal(retried, GlobalBatchSampler(COUNT, BATCH, 4).batch_at((state["epoch"], state["offset"]))[0])


def test_close_stops_the_thread_and_the_wait_is_measured(dataset):
    before = threading.active_count()
    ahead = Prefetcher(dataset, GlobalBatchSampler(COUNT, BATCH, 4), CPU, depth=2)
    ahead.next()
    assert threading.active_count() == before + 1
    waited = ahead.take_wait_s()
    assert waited > 0 and ahead.take_wait_s() == 0.0  # the first batch is always waited for; then reset
    ahead.close()
    ahead.close()
    assert threading.active_count() == before
