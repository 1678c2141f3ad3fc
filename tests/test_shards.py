"""The sharded reader: plain-library format, integrity checks, the distributed sampler, resume."""

import json
import os

import h5py
import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import TINY

from began_dist import uris
from began_dist.cli import main
from began_dist.data import DataError, ShardedDataset, sources
from began_dist.data import format as fmt
from began_dist.data.sampler import GlobalBatchSampler
from began_dist.train import state as ckpt

FORMATS = ["arrow", "hdf5"]
COUNT = 40  # CRS images per prepared test dataset


@pytest.fixture(scope="module", params=FORMATS)
def crs(request, tmp_path_factory):
    """A prepared 16 px CRS training set (40 images, 3 shards) and the images it must hold."""
    out = tmp_path_factory.mktemp(f"crs-{request.param}")
    code = main(["prepare", "shapes", str(out), "--format", request.param, "--size", "16", "--shards", "3",
                 "--limit", str(COUNT)])
    assert code == 0
    images, y, masks = sources.crs_render(sources.crs_grid(["square+cross", "square"], COUNT), 16)
    return str(out / "train"), request.param, torch.from_numpy(images).permute(0, 3, 1, 2), y, masks


def copy_dataset(src, dst):
    os.makedirs(dst)
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as a, open(os.path.join(dst, name), "wb") as b:
            b.write(a.read())
    return dst


def read_manifest(path):
    with open(os.path.join(path, "manifest.json")) as handle:
        return json.load(handle)


# -- format and reader -------------------------------------------------------------------------
def test_shards_open_with_plain_pyarrow_and_h5py(crs):
    path, format_name, images, y, masks = crs
    manifest = read_manifest(path)
    first = os.path.join(path, manifest["shards"][0]["file"])
    count = manifest["shards"][0]["count"]
    if format_name == "arrow":
        table = pa.ipc.open_file(pa.memory_map(first)).read_all()
        pixels = np.stack(table.column("image").to_numpy(zero_copy_only=False)).reshape(count, 16, 16, 1)
        labels = np.stack(table.column("y").to_numpy(zero_copy_only=False))
    else:
        with h5py.File(first) as handle:
            pixels, labels = handle["images"][()], handle["y"][()]
            assert handle["images"].chunks is not None
    assert np.array_equal(pixels[..., 0], images[:count, 0].numpy()) and np.array_equal(labels, y[:count])
    assert manifest["labels"] == {"y": "uint8", "masks": "uint8"} and manifest["label_shapes"]["masks"] == [2, 16, 16]


def test_reader_random_access_labels_masks_and_file_uri(crs):
    path, _, images, y, masks = crs
    order = torch.randperm(COUNT, generator=torch.Generator().manual_seed(0))
    for location in (path, "file://" + os.path.abspath(path)):
        dataset = ShardedDataset(location)
        assert len(dataset) == COUNT and dataset.image_size == 16 and dataset.channels == 1
        assert torch.equal(dataset.batch(order), images[order]) and dataset.batch(order).is_contiguous()
        assert torch.equal(dataset.label_batch("masks", order), torch.from_numpy(masks)[order])
        assert dataset.labels.tolist() == y.tolist()
    assert len(ShardedDataset(path, limit=10)) == 10


def test_dataloader_workers_reopen_the_files(crs):
    path, _, images, _, _ = crs
    dataset = ShardedDataset(path)
    dataset.batch(torch.arange(2))  # open here first: the worker must not reuse this process's maps
    sampler = GlobalBatchSampler(COUNT, 8, seed=0)
    batches = [sampler.next_indices().tolist() for _ in range(5)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=1, collate_fn=lambda x: x)
    for indices, batch in zip(batches, loader):
        assert torch.equal(batch, images[indices])


# -- integrity -----------------------------------------------------------------------------------
def train_on(path, tmp_path, *extra):
    return main(["train", *TINY, "data.source=shards", f"data.path={path}", "train.steps=2",
                 f"run.dir={tmp_path / 'run'}", *extra])


def flip_a_byte(path):
    with open(path, "r+b") as handle:
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))


def truncate(path):
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) - 100)


@pytest.mark.parametrize("damage, message", [
    (flip_a_byte, "checksum mismatch"),
    (truncate, "truncated"),
    (os.remove, "missing"),
])
def test_damaged_shard_refused_before_training_naming_the_file(crs, tmp_path, capsys, damage, message):
    path = copy_dataset(crs[0], str(tmp_path / "data"))
    damage(os.path.join(path, "shard-00001" + fmt.FORMATS[crs[1]]))
    assert train_on(path, tmp_path) == 2
    err = capsys.readouterr().err
    assert "shard-00001" in err and message in err
    assert not os.path.exists(tmp_path / "run")  # refused before the run directory exists
    assert main(["prepare", "--verify", path]) == 2
    table = capsys.readouterr().out
    assert "shard-00000" in table and "2 of 3 shards ok" in table and message.split()[0] in table


def test_schema_that_does_not_match_the_manifest(crs, tmp_path, capsys):
    """A shard whose label has another dtype, with a correct checksum: only the schema check can catch it."""
    path = copy_dataset(crs[0], str(tmp_path / "data"))
    manifest = read_manifest(path)
    entry = manifest["shards"][2]
    reader = ShardedDataset(crs[0])
    rows = torch.arange(sum(s["count"] for s in manifest["shards"][:2]), COUNT)
    images = reader.batch(rows).permute(0, 2, 3, 1).numpy()
    labels = {"y": reader.label_batch("y", rows).numpy().astype(np.int32),
              "masks": reader.label_batch("masks", rows).numpy()}
    entry.update(fmt.write_shard(os.path.join(path, entry["file"]), crs[1], images, labels))
    fmt.write_manifest(path, manifest)
    with pytest.raises(DataError, match=r"shard-00002.*schema does not match"):
        ShardedDataset(path)
    assert main(["prepare", "--verify", path]) == 2 and "schema" in capsys.readouterr().out


def test_manifest_problems_are_named(crs, tmp_path, capsys):
    path = copy_dataset(crs[0], str(tmp_path / "data"))
    manifest = read_manifest(path)
    manifest["count"] += 1
    fmt.write_manifest(path, manifest)
    with pytest.raises(DataError, match="do not add up"):
        ShardedDataset(path)
    os.remove(os.path.join(path, "manifest.json"))
    assert train_on(path, tmp_path) == 2 and "manifest.json" in capsys.readouterr().err


def test_model_size_must_match_the_prepared_size(crs, tmp_path, capsys):
    assert train_on(crs[0], tmp_path, "model.image_size=32") == 2
    assert "model.image_size=32" in capsys.readouterr().err


@pytest.mark.parametrize("uri", [False, True])
def test_verify_passes_on_an_intact_dataset(crs, capsys, uri):
    assert main(["prepare", "--verify", ("file://" + os.path.abspath(crs[0])) if uri else crs[0]]) == 0
    out = capsys.readouterr().out
    assert out.count("  ok\n") == 3 and "3 of 3 shards ok" in out


def make_hostile_shard(path, trick, outside):
    """Rewrite shard-00001.h5 so one object reaches `outside` (holding the same bytes: training on
    main would run), and record its true size and sha256 in the manifest."""
    manifest = read_manifest(path)
    entry = manifest["shards"][1]
    shard = os.path.join(path, entry["file"])
    with h5py.File(shard) as handle:
        arrays = {name: handle[name][()] for name in handle}
    os.remove(shard)
    with h5py.File(shard, "w") as handle:
        for name, values in arrays.items():
            if name == "images" and trick == "external storage":
                outside.write_bytes(values.tobytes())
                handle.create_dataset(name, shape=values.shape, dtype=values.dtype,
                                      external=[(str(outside), 0, values.nbytes)])
            elif name == "y" and trick == "external link":
                with h5py.File(outside, "w") as other:
                    other.create_dataset("y", data=values)
                handle["y"] = h5py.ExternalLink(str(outside), "/y")
            elif name == "masks" and trick == "virtual":
                with h5py.File(outside, "w") as other:
                    other.create_dataset("masks", data=values)
                layout = h5py.VirtualLayout(shape=values.shape, dtype=values.dtype)
                layout[:] = h5py.VirtualSource(str(outside), "masks", shape=values.shape)
                handle.create_virtual_dataset("masks", layout)
            else:
                handle.create_dataset(name, data=values)
    entry.update(bytes=os.path.getsize(shard), sha256=fmt.sha256_file(shard))
    fmt.write_manifest(path, manifest)


@pytest.mark.parametrize("crs", ["hdf5"], indirect=True)
@pytest.mark.parametrize("trick, name, message", [
    ("external storage", "images", "stores its bytes in external file"),
    ("external link", "y", "external link"),
    ("virtual", "masks", "virtual dataset"),
])
def test_hdf5_shard_reaching_other_files_is_refused_though_its_checksum_passes(crs, tmp_path, capsys, trick,
                                                                               name, message):
    path = copy_dataset(crs[0], str(tmp_path / "data"))
    outside = tmp_path / ("pixels.bin" if trick == "external storage" else "outside.h5")
    make_hostile_shard(path, trick, outside)
    assert train_on(path, tmp_path) == 2
    err = capsys.readouterr().err
    assert "shard-00001.h5" in err and f"{name!r}" in err and message in err and str(outside) in err
    assert not os.path.exists(tmp_path / "run")  # refused before the run directory exists
    assert main(["prepare", "--verify", path]) == 2
    table = capsys.readouterr().out
    assert "2 of 3 shards ok" in table and message in table


@pytest.mark.parametrize("uri", ["hdfs://namenode:8020/data/crs", "viewfs://cluster/crs", "mock://crs", "data://crs"])
def test_data_path_with_an_unlisted_scheme_is_refused(tmp_path, capsys, uri):
    assert train_on(uri, tmp_path) == 2
    err = capsys.readouterr().err
    assert f"data.path={uri}" in err and "is not supported" in err and "libhdfs" not in err
    assert not os.path.exists(tmp_path / "run")
    assert main(["prepare", "--verify", uri]) == 2 and f"prepare --verify={uri}" in capsys.readouterr().err


def test_uri_scheme_names_the_key():
    assert [uris.uri_scheme(p, "k") for p in ("runs/a", "/abs", "file:///x", "S3://b/p?region=x", "gs://b")] == [
        "", "", "file", "s3", "gs"]
    for bad in ("hdfs://nn/x", "runs/a://b", "://x"):
        with pytest.raises(DataError, match=r"^run\.dir=.*not supported; use a local path or file://, s3://, gs://"):
            uris.uri_scheme(bad, "run.dir", DataError)


# -- the sampler (docs/design.md: the data-parallel rule) -------------------------------------
def epoch_batches(sampler, count):
    return [sampler.next_indices() for _ in range(count)]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_are_disjoint_and_complete(world):
    ranks = [GlobalBatchSampler(50, 8, seed=5, rank=r, world=world) for r in range(world)]
    per_rank = [torch.cat(epoch_batches(s, 6)) for s in ranks]  # one epoch: 6 batches of 8 in 50 images
    together = torch.cat(per_rank)
    assert len(set(together.tolist())) == 48 and all(len(p) == 48 // world for p in per_rank)
    for a in range(world):
        for b in range(a + 1, world):
            assert not set(per_rank[a].tolist()) & set(per_rank[b].tolist())


def test_permutation_is_fixed_by_seed_and_epoch():
    a, b = GlobalBatchSampler(50, 8, seed=5), GlobalBatchSampler(50, 8, seed=5)
    assert torch.equal(torch.cat(epoch_batches(a, 12)), torch.cat(epoch_batches(b, 12)))
    assert not torch.equal(a.permutation(0), a.permutation(1))
    assert not torch.equal(a.permutation(0), GlobalBatchSampler(50, 8, seed=6).permutation(0))


@pytest.mark.parametrize("stop_after, world_after", [(3, 1), (3, 2), (8, 4), (6, 2)])
def test_resume_mid_epoch_with_any_world_size(stop_after, world_after):
    straight = torch.cat(epoch_batches(GlobalBatchSampler(50, 8, seed=2), 14))
    first = GlobalBatchSampler(50, 8, seed=2)
    consumed = torch.cat(epoch_batches(first, stop_after))
    state = first.state_dict()
    resumed = [GlobalBatchSampler(50, 8, seed=2, rank=r, world=world_after) for r in range(world_after)]
    for sampler in resumed:
        sampler.load_state_dict(state)
    rest = torch.cat([torch.cat([s.next_indices() for s in resumed]) for _ in range(14 - stop_after)])
    assert torch.equal(torch.cat([consumed, rest]), straight)


def test_resume_on_other_data_is_refused():
    state = GlobalBatchSampler(50, 8, seed=2).state_dict()
    with pytest.raises(DataError, match="50 images"):
        GlobalBatchSampler(40, 8, seed=2).load_state_dict(state)


# -- training on shards ----------------------------------------------------------------------------
def test_training_on_shards_resumes_at_the_exact_image(tmp_path, capsys):
    """7 straight steps == 3 steps, stop, resume to 7: same data position, same weights bit for bit."""
    assert main(["prepare", "shapes", str(tmp_path / "crs"), "--format", "hdf5", "--size", "16", "--shards", "2",
                 "--limit", str(COUNT)]) == 0
    data = [*TINY, "data.source=shards", f"data.path={tmp_path / 'crs' / 'train'}", "train.batch_size=8"]
    assert main(["train", *data, "train.steps=7", f"run.dir={tmp_path / 'straight'}"]) == 0
    assert main(["train", *data, "train.steps=3", f"run.dir={tmp_path / 'cut'}"]) == 0
    cut = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path / "cut")))
    position = {"seed": 0, "num_images": COUNT, "shuffle": "feistel-v1"}
    assert cut["data"] == {"epoch": 0, "offset": 24, **position}  # mid-epoch: 5 batches of 8
    assert main(["train", "--resume", str(tmp_path / "cut"), "train.steps=7"]) == 0
    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path / "straight")))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path / "cut")))
    assert a["step"] == b["step"] == 7
    assert a["data"] == b["data"] == {"epoch": 1, "offset": 16, **position}
    for key in ("G", "D"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    assert "40 images (shards)" in open(os.path.join(tmp_path / "cut", "log.txt")).read()
