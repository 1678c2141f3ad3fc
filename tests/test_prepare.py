"""`began-dist prepare`: every source round-trips through both shard formats.

Inputs are synthesised here in their real formats (a CIFAR-10 python archive, a CelebA
folder, artcg/BEGAN's flat HDF5, IDX files, a CNS pixmap tree); the Debian packages are
only used when installed.
"""

import gzip
import io
import json
import os
import pickle
import struct
import tarfile
import tracemalloc
import zlib

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from began_dist.cli import main
from began_dist.data import DataError, ShardedDataset, plans, sources
from began_dist.data import prepare as prep

FORMATS = ["arrow", "hdf5"]


def prepare(capsys, *args):
    """Run `began-dist prepare ...` in-process; returns (exit code, stderr)."""
    code = main(["prepare", *map(str, args)])
    return code, capsys.readouterr().err


def as_nhwc(dataset):
    return dataset.batch(torch.arange(len(dataset))).permute(0, 2, 3, 1).numpy()


def manifest(path):
    with open(os.path.join(path, "manifest.json")) as handle:
        return json.load(handle)


# -- folder and CelebA ----------------------------------------------------------------------
def make_folder(root, rng):
    for cls in ("dogs", "cats"):
        (root / cls / "deep").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(root / cls / "deep" / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 4), dtype=np.uint8), "RGBA").save(root / "cats" / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8), "L").save(root / "dogs" / "grey.jpg")
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("fmt", FORMATS)
def test_folder_round_trip(tmp_path, capsys, fmt):
    paths = make_folder(tmp_path / "src", np.random.default_rng(0))
    code, err = prepare(capsys, tmp_path / "src", tmp_path / "out", "--format", fmt, "--size", 16, "--shards", 3)
    assert code == 0, err
    dataset = ShardedDataset(str(tmp_path / "out"))
    expected = np.stack([sources.load_image(p, 16, 3) for p in paths])
    assert len(dataset) == 8 and np.array_equal(as_nhwc(dataset), expected)
    assert dataset.labels[:, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # cats = 0, dogs = 1 (sorted names)
    info = manifest(tmp_path / "out")
    assert info["classes"] == ["cats", "dogs"] and info["source"]["kind"] == "folder" and info["channels"] == 3
    assert [s["count"] for s in info["shards"]] == [3, 2, 3] and info["labels"] == {"class": "int64"}


def test_folder_to_one_channel(tmp_path, capsys):
    paths = make_folder(tmp_path / "src", np.random.default_rng(1))
    code, _ = prepare(capsys, tmp_path / "src", tmp_path / "out", "--format", "arrow", "--size", 8, "--channels", 1)
    assert code == 0
    expected = np.stack([sources.load_image(p, 8, 1) for p in paths])
    assert np.array_equal(as_nhwc(ShardedDataset(str(tmp_path / "out"))), expected)


@pytest.mark.parametrize("crop, box", [("carpedm20", (25, 50, 153, 178)), ("center160", (9, 29, 169, 189))])
def test_celeba_crop_presets(tmp_path, capsys, crop, box):
    """A 178x218 CelebA image, red inside the preset's crop box and blue outside: only red survives."""
    celeba = tmp_path / "celeba" / "img_align_celeba"
    celeba.mkdir(parents=True)
    for i in range(2):
        image = np.zeros((218, 178, 3), np.uint8)
        image[..., 2] = 255
        image[box[1] : box[3], box[0] : box[2]] = (255 - i, 0, 0)
        Image.fromarray(image).save(celeba / f"{i + 1:06d}.png")
    code, err = prepare(capsys, tmp_path / "celeba", tmp_path / "out", "--size", 16, "--crop", crop)
    assert code == 0, err
    images = as_nhwc(ShardedDataset(str(tmp_path / "out")))
    assert manifest(tmp_path / "out")["source"]["kind"] == "celeba"  # inferred from img_align_celeba/
    assert images[0].reshape(-1, 3).tolist() == [[255, 0, 0]] * 256 and images[1, 0, 0].tolist() == [254, 0, 0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_celeba_default_crop_is_carpedm20(tmp_path, capsys, fmt):
    celeba = tmp_path / "img_align_celeba"
    celeba.mkdir()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (218, 178, 3), np.uint8)).save(celeba / "000001.jpg")
    assert prepare(capsys, celeba, tmp_path / "out", "--size", 32, "--format", fmt)[0] == 0
    with Image.open(celeba / "000001.jpg") as image:
        expected = np.asarray(image.convert("RGB").crop((25, 50, 153, 178)).resize((32, 32), Image.LANCZOS))
    assert np.array_equal(as_nhwc(ShardedDataset(str(tmp_path / "out")))[0], expected)


def test_bad_images_are_listed_or_skipped_and_counted(tmp_path, capsys):
    paths = make_folder(tmp_path / "src", np.random.default_rng(3))
    good = (tmp_path / "src" / "cats" / "deep" / "0.png").read_bytes()
    (tmp_path / "src" / "cats" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "src" / "dogs" / "junk.png").write_bytes(b"not an image")
    code, err = prepare(capsys, tmp_path / "src", tmp_path / "out", "--size", 8, "--shards", 2)
    assert code == 2 and "truncated.png" in err and "junk.png" in err and "--skip-bad" in err
    assert not os.path.exists(tmp_path / "out" / "manifest.json") and not list((tmp_path / "out").glob("shard-*"))
    code, err = prepare(capsys, tmp_path / "src", tmp_path / "out", "--size", 8, "--shards", 2, "--skip-bad")
    assert code == 0, err
    info = manifest(tmp_path / "out")
    assert info["count"] == len(paths) and info["skipped"]["count"] == 2
    assert sorted(os.path.basename(p) for p in info["skipped"]["bad_files"]) == ["junk.png", "truncated.png"]


def test_a_crash_leaves_no_manifest_and_an_existing_dataset_is_kept(tmp_path, capsys, monkeypatch):
    make_folder(tmp_path / "src", np.random.default_rng(4))
    calls = []

    def crash_on_second_shard(items, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # 1st call: the label dry run; then shard 0 is written; shard 1 crashes
            raise RuntimeError("disk full")
        return plans.load_image_files(items, **kwargs)

    real_plan = plans._plan_folder
    monkeypatch.setattr(plans, "_plan_folder", lambda *a: prep.Plan(**{**real_plan(*a).__dict__,
                                                                      "loader": crash_on_second_shard}))
    with pytest.raises(RuntimeError, match="disk full"):
        prep.prepare(str(tmp_path / "src"), str(tmp_path / "out"), prep.PrepareOptions(size=8, shards=3, jobs=1))
    assert not os.path.exists(tmp_path / "out" / "manifest.json") and not list((tmp_path / "out").glob("shard-*"))
    monkeypatch.undo()
    assert prepare(capsys, tmp_path / "src", tmp_path / "out", "--size", 8)[0] == 0
    code, err = prepare(capsys, tmp_path / "src", tmp_path / "out", "--size", 8)
    assert code == 2 and "already holds a dataset" in err


def test_parallel_jobs_write_the_same_shards(tmp_path, capsys):
    make_folder(tmp_path / "src", np.random.default_rng(5))
    for jobs in (1, 2):
        code, err = prepare(capsys, tmp_path / "src", tmp_path / f"j{jobs}", "--size", 8, "--shards", 2, "--jobs", jobs)
        assert code == 0, err
    assert [s["sha256"] for s in manifest(tmp_path / "j1")["shards"]] == [
        s["sha256"] for s in manifest(tmp_path / "j2")["shards"]
    ]


# -- CIFAR-10 --------------------------------------------------------------------------------
def cifar_batch(rng, count):
    return {
        b"batch_label": b"training batch",
        b"labels": rng.integers(0, 10, count).tolist(),
        b"data": rng.integers(0, 255, (count, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(count)],
    }


def make_cifar_archive(path, rng, count=3, hostile=None):
    """cifar-10-python.tar.gz as distributed: cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."""
    batches = {name: cifar_batch(rng, count) for name in sources.CIFAR_MEMBERS}
    with tarfile.open(path, "w:gz") as archive:
        for name, batch in [*batches.items(), ("batches.meta", {b"label_names": [b"airplane"]})]:
            raw = hostile if name == "data_batch_2" and hostile else pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
    return batches


@pytest.mark.parametrize("fmt", FORMATS)
def test_cifar10_archive_round_trip(tmp_path, capsys, fmt):
    batches = make_cifar_archive(tmp_path / "cifar-10-python.tar.gz", np.random.default_rng(6))
    code, err = prepare(capsys, tmp_path / "cifar-10-python.tar.gz", tmp_path / "out", "--format", fmt,
                        "--size", 32, "--shards", 4)
    assert code == 0, err
    dataset = ShardedDataset(str(tmp_path / "out"))
    expected = np.concatenate([b[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1) for b in batches.values()])
    labels = sum((b[b"labels"] for b in batches.values()), [])
    assert np.array_equal(as_nhwc(dataset), expected)
    assert dataset.labels[:, 0].tolist() == labels and dataset.labels[:, 1].tolist() == [0] * 15 + [1] * 3
    assert manifest(tmp_path / "out")["classes"][3] == "cat"


class Hostile:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_in_a_cifar_archive_is_refused_and_not_run(tmp_path, capsys):
    hostile = Hostile()
    hostile.marker = tmp_path / "pwned"
    make_cifar_archive(tmp_path / "c.tar.gz", np.random.default_rng(7), hostile=pickle.dumps(hostile, protocol=2))
    code, err = prepare(capsys, tmp_path / "c.tar.gz", tmp_path / "out", "--size", 32)
    assert code == 2 and "data_batch_2" in err and "refused" in err and "system" in err
    assert not os.path.exists(tmp_path / "pwned") and not os.path.exists(tmp_path / "out" / "manifest.json")


# -- artcg/BEGAN's flat HDF5 (seed 001, docs/design.md) ---------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_hdf5_flat_round_trip(tmp_path, capsys, fmt):
    rows = np.random.default_rng(8).integers(0, 255, (150, 12 * 12 * 3), dtype=np.uint8)  # 2 shards, 2 chunks each
    with h5py.File(tmp_path / "celeba.h5", "w") as handle:
        handle.create_dataset("images", data=rows)
    code, err = prepare(capsys, tmp_path / "celeba.h5", tmp_path / "out", "--format", fmt, "--size", 8,
                        "--shards", 2, "--source-size", 12)
    assert code == 0, err
    expected = sources.resize_images(rows.reshape(150, 12, 12, 3), 8)
    assert np.array_equal(as_nhwc(ShardedDataset(str(tmp_path / "out"))), expected)
    code, err = prepare(capsys, tmp_path / "celeba.h5", tmp_path / "o2", "--size", 8, "--source-size", 10)
    assert code == 2 and "--source-size" in err


# -- glyphs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_glyphs_from_two_styles_with_tofu_counted(tmp_path, capsys, fmt):
    noto = sources.default_font()
    chars = tmp_path / "chars.txt"
    chars.write_text("一丁\u0378\n七", encoding="utf-8")  # U+0378 is unassigned: tofu in every font
    code, err = prepare(capsys, "glyphs", tmp_path / "out", "--size", 16, "--shards", 2, "--format", fmt,
                        "--fonts", f"{noto}:2,{noto}:0", "--charset", chars)
    assert code == 0, err
    dataset = ShardedDataset(str(tmp_path / "out"))
    info = manifest(tmp_path / "out")
    assert info["skipped"]["missing_glyphs"] == {"0": 1, "1": 1} and info["count"] == 6
    codes, styles = dataset.labels[:, 0].tolist(), dataset.labels[:, 1].tolist()
    assert codes == [0x4E00, 0x4E00, 0x4E01, 0x4E01, 0x4E03, 0x4E03] and styles == [0, 1] * 3
    sc, _ = sources.render_font_glyphs([0x4E00, 0x4E01, 0x4E03], noto, 2, 16)
    assert np.array_equal(as_nhwc(dataset)[0::2], sc)


WQY = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"


def needs_debian_package(present: bool, package: str):
    """Skip without the package, except in CI: .ci/run installs it, so a missing one fails there."""
    return pytest.mark.skipif(
        not present and os.environ.get("CI") != "true", reason=f"{package} is not installed (apt-get install {package})"
    )


@needs_debian_package(os.path.isfile(WQY), "fonts-wqy-microhei")
def test_an_installed_debian_font_is_a_second_style(tmp_path, capsys):
    code, err = prepare(capsys, "glyphs", tmp_path / "out", "--size", 32, "--charset", "4E00-4E07",
                        "--fonts", f"{sources.default_font()}:2,{WQY}")
    assert code == 0, err
    dataset = ShardedDataset(str(tmp_path / "out"))
    images = as_nhwc(dataset).astype(int)
    assert len(dataset) == 16 and dataset.labels[:, 1].tolist() == [0, 1] * 8
    assert all(np.abs(images[i] - images[i + 1]).mean() > 5 for i in range(0, 16, 2))  # same char, other style


def test_charset_range_and_common(tmp_path):
    noto = sources.default_font()
    assert sources.parse_charset("U+4E00-U+4E03", []) == [0x4E00, 0x4E01, 0x4E02, 0x4E03]
    common = sources.parse_charset("common", [(noto, 2), (noto, 0)])
    assert 20_000 < len(common) <= 20_992 and 0x4E00 in common
    with pytest.raises(DataError, match="charset"):
        sources.parse_charset("nonsense", [])


def test_missing_font_is_refused(tmp_path, capsys):
    code, err = prepare(capsys, "glyphs", tmp_path / "out", "--fonts", tmp_path / "nope.ttf", "--charset", "4E00")
    assert code == 2 and "nope.ttf" in err


# -- CNS pixmaps ------------------------------------------------------------------------------
def make_cns_tree(root):
    """Three bitmaps in the package's layout: plane dirs, EUC-TW names, black on white, 24 px (one 25x24)."""
    names = {"a1/8ea1e7bc.png": "酪", "a1/8ea1a1a2.png": "，", "a2/8ea2a1a1.png": "乂", "a3/8EA3A1A1.png": None}
    rng = np.random.default_rng(9)
    for index, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shape = (24, 25) if index == 2 else (24, 24)
        Image.fromarray(np.where(rng.random(shape) < 0.3, 0, 255).astype(np.uint8)).convert("RGB").save(root / name)
    return names


@pytest.mark.parametrize("fmt", FORMATS)
def test_cns_tree_maps_euc_tw_names_to_unicode(tmp_path, capsys, fmt):
    make_cns_tree(tmp_path / "cns11643")
    found = sources.cns_files(str(tmp_path / "cns11643"))
    assert [(os.path.basename(p), chr(c), plane) for p, c, plane in found[:2]] == [
        ("8ea1e7bc.png", "酪", 1), ("8ea2a1a1.png", "乂", 2)
    ]  # the comma is not an ideograph and is left out
    code, err = prepare(capsys, tmp_path / "cns11643", tmp_path / "out", "--format", fmt, "--size", 16)
    assert code == 0, err
    dataset = ShardedDataset(str(tmp_path / "out"))
    expected = np.stack([255 - sources.load_image(p, 16, 1) for p, _, _ in found])
    assert np.array_equal(as_nhwc(dataset), expected) and dataset.labels[:, 0].tolist() == [c for _, c, _ in found]


@needs_debian_package(os.path.isdir(sources.CNS_ROOT), "fonts-cns11643-pixmaps")
def test_installed_cns_planes_1_to_3():
    found = sources.cns_files()
    lao = (os.path.join(sources.CNS_ROOT, "a1", "8ea1e7bc.png"), ord("酪"), 1)
    assert 19_000 < len(found) < 20_000 and lao in found


# -- Fashion-MNIST IDX -------------------------------------------------------------------------
def write_idx(path, array):
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.tobytes())


def make_fashion(root, rng):
    root.mkdir()
    parts = {}
    for split, count in (("train", 5), ("t10k", 3)):
        parts[split] = rng.integers(0, 255, (count, 28, 28), dtype=np.uint8), rng.integers(0, 10, count, np.uint8)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", parts[split][0])
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", parts[split][1])
    return parts


@pytest.mark.parametrize("fmt", FORMATS)
def test_fashion_mnist_idx_round_trip(tmp_path, capsys, fmt):
    parts = make_fashion(tmp_path / "fm", np.random.default_rng(10))
    code, err = prepare(capsys, tmp_path / "fm", tmp_path / "out", "--format", fmt, "--size", 28, "--shards", 2)
    assert code == 0, err
    dataset = ShardedDataset(str(tmp_path / "out"))
    assert np.array_equal(as_nhwc(dataset)[..., 0], np.concatenate([parts["train"][0], parts["t10k"][0]]))
    assert dataset.labels.tolist() == [[int(c), s] for s in (0, 1) for c in parts[("train", "t10k")[s]][1]]


def test_truncated_idx_file_is_named(tmp_path, capsys):
    make_fashion(tmp_path / "fm", np.random.default_rng(11))
    raw = gzip.decompress((tmp_path / "fm" / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "fm" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-10]))
    code, err = prepare(capsys, tmp_path / "fm", tmp_path / "out", "--size", 28)
    assert code == 2 and "t10k-images-idx3-ubyte.gz" in err and "truncated" in err


@needs_debian_package(os.path.isdir(sources.FASHION_ROOT), "dataset-fashion-mnist")
def test_installed_fashion_mnist_reads_70k():
    images, labels, split = sources.read_fashion_mnist()
    assert images.shape == (70_000, 28, 28, 1) and np.bincount(labels[split == 0]).tolist() == [6000] * 10


# -- shapes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_shapes_write_train_and_heldout_with_masks(tmp_path, capsys, fmt):
    code, err = prepare(capsys, "shapes", tmp_path / "crs", "--format", fmt, "--size", 16, "--limit", 12)
    assert code == 0, err
    train, heldout = ShardedDataset(str(tmp_path / "crs" / "train")), ShardedDataset(str(tmp_path / "crs" / "heldout"))
    images, y, masks = sources.crs_render(sources.crs_grid(["square+cross", "square"], 12), 16)
    everything = torch.arange(12)
    assert np.array_equal(as_nhwc(train), images) and train.labels.tolist() == y.tolist()
    assert torch.equal(train.label_batch("masks", everything), torch.from_numpy(masks))
    assert heldout.labels.tolist() == [[1, 0]] * 12 and not heldout.label_batch("masks", everything)[:, 1].any()
    full = sources.crs_render([("square+cross", 32, 32, 18, 0, 2)], 64)
    assert np.array_equal(full[0][0, ..., 0], full[2][0].max(axis=0))  # the image is the union of its components


# -- hostile inputs: refused naming the file, nothing read outside it --------------------------
def untouched_sentinel(path):
    """Give `path` an access time older than its mtime: under relatime any read would move it."""
    os.utime(path, (1_000_000, 2_000_000))
    return lambda: os.stat(path).st_atime == 1_000_000


def atime_works(tmp_path):
    """Whether reads update access times here (not on a noatime mount); else the sentinels prove nothing."""
    control = tmp_path / "control"
    control.write_bytes(b"x")
    unread = untouched_sentinel(control)
    control.read_bytes()
    return not unread()


def hostile_hdf5(path, trick, other):
    """artcg/BEGAN's layout whose `images` reach outside the file: `other` holds the bytes (or an HDF5 file)."""
    rows = np.random.default_rng(12).integers(0, 255, (8, 4 * 4 * 3), dtype=np.uint8)
    with h5py.File(path, "w") as handle:
        if trick == "external storage":  # the /etc/passwd case: the dataset's bytes live in another file
            other.write_bytes(rows.tobytes())
            handle.create_dataset("images", shape=rows.shape, dtype=np.uint8, external=[(str(other), 0, rows.nbytes)])
            return
        if trick == "plugin filter":  # an unknown filter id: HDF5 would search its plugin path for a library
            plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            plist.set_chunk(rows.shape)
            plist.set_filter(32001, h5py.h5z.FLAG_OPTIONAL)
            space = h5py.h5s.create_simple(rows.shape)
            h5py.h5d.create(handle.id, b"images", h5py.h5t.STD_U8LE, space, dcpl=plist).write(space, space, rows)
            return
        with h5py.File(other, "w") as target:
            target.create_dataset("images", data=rows)
        if trick == "external link":
            handle["images"] = h5py.ExternalLink(str(other), "/images")
        elif trick == "soft link":  # a soft link stays in the file, but can lead through an external one
            handle["ext"] = h5py.ExternalLink(str(other), "/")
            handle["images"] = h5py.SoftLink("/ext/images")
        else:
            layout = h5py.VirtualLayout(shape=rows.shape, dtype=np.uint8)
            layout[:] = h5py.VirtualSource(str(other), "images", shape=rows.shape)
            handle.create_virtual_dataset("images", layout)


@pytest.mark.parametrize("trick, message", [
    ("external storage", "stores its bytes in external file"),
    ("external link", "external link"),
    ("soft link", "external link"),
    ("virtual", "virtual dataset"),
    ("plugin filter", "uses HDF5 filter 32001"),
])
def test_hdf5_source_reaching_other_files_is_refused_unread(tmp_path, capsys, trick, message):
    other = tmp_path / ("secret.bin" if trick == "external storage" else "other.h5")
    hostile_hdf5(tmp_path / "celeba.h5", trick, other)
    unread = untouched_sentinel(other) if other.exists() else None
    code, err = prepare(capsys, tmp_path / "celeba.h5", tmp_path / "out", "--size", 4)
    assert code == 2 and "celeba.h5" in err and "'images'" in err and message in err
    assert not os.path.exists(tmp_path / "out" / "manifest.json")
    if unread:
        assert str(other) in err and (unread() or not atime_works(tmp_path))


def png_declaring(width, height):
    """A real 1x1 PNG whose header claims width x height (the IHDR CRC fixed), as a bomb's header does."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    raw = bytearray(buffer.getvalue())
    raw[16:24] = struct.pack(">II", width, height)  # IHDR data starts after the signature, length and type
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


def test_decompression_bomb_is_a_bad_file_refused_or_skipped(tmp_path, capsys):
    paths = make_folder(tmp_path / "src", np.random.default_rng(13))
    (tmp_path / "src" / "cats" / "bomb.png").write_bytes(png_declaring(20000, 20000))
    code, err = prepare(capsys, tmp_path / "src", tmp_path / "out", "--size", 8)
    assert code == 2 and "bomb.png: 400,000,000 pixels, more than the limit of 89,478,485 (prepare --max-pixels)" in err
    assert "--skip-bad" in err
    assert not os.path.exists(tmp_path / "out" / "manifest.json")
    code, err = prepare(capsys, tmp_path / "src", tmp_path / "out", "--size", 8, "--skip-bad")
    assert code == 0, err
    skipped = manifest(tmp_path / "out")["skipped"]
    assert [os.path.basename(p) for p in skipped["bad_files"]] == ["bomb.png"] and skipped["count"] == 1
    assert "bomb.png: 400,000,000 pixels" in skipped["reasons"][0]
    # the limit is the option's: the 30x30 RGBA image (900 px) is over 800, the others (<= 672 px) are not
    code, err = prepare(capsys, tmp_path / "src", tmp_path / "o2", "--size", 8, "--skip-bad", "--max-pixels", 800)
    assert code == 0, err
    assert sorted(os.path.basename(p) for p in manifest(tmp_path / "o2")["skipped"]["bad_files"]) == [
        "bomb.png", "rgba.png"] and manifest(tmp_path / "o2")["count"] == len(paths) - 1


def test_oversized_archive_member_is_refused_before_it_is_read(tmp_path, capsys):
    """A 60 MB member of zeros (60 KB compressed) where a CIFAR batch is 31 MB: refused from its tar header."""
    rng = np.random.default_rng(14)
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz", compresslevel=1) as archive, open("/dev/zero", "rb") as zeros:
        for name in sources.CIFAR_MEMBERS:
            big = name == "data_batch_1"
            raw = b"" if big else pickle.dumps(cifar_batch(rng, 2), protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = 60 << 20 if big else len(raw)
            archive.addfile(info, zeros if big else io.BytesIO(raw))
    assert os.path.getsize(tmp_path / "c.tar.gz") < 1 << 20
    tracemalloc.start()
    try:
        code, err = prepare(capsys, tmp_path / "c.tar.gz", tmp_path / "out", "--size", 32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 2 and "data_batch_1" in err and "62,914,560 bytes" in err and "refused unread" in err
    assert peak < 16 << 20, f"peak {peak / 2**20:.0f} MB of Python allocations"
    assert not os.path.exists(tmp_path / "out" / "manifest.json")


def test_idx_header_promising_too_much_is_refused_unread(tmp_path, capsys):
    make_fashion(tmp_path / "fm", np.random.default_rng(15))
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3i", 100_000, 4096, 4096)  # 1.6 TB promised
    with gzip.open(tmp_path / "fm" / "train-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(header + bytes(1000))
    code, err = prepare(capsys, tmp_path / "fm", tmp_path / "out", "--size", 28)
    assert code == 2 and "train-images-idx3-ubyte.gz" in err and "refused unread" in err


@pytest.mark.parametrize("out, message", [
    ("hdfs://namenode/data/x", "scheme hdfs:// is not supported"),
    ("mock://x", "scheme mock:// is not supported"),  # pyarrow.fs would accept this one
])
def test_prepare_out_scheme_is_checked_before_anything(tmp_path, capsys, monkeypatch, out, message):
    monkeypatch.chdir(tmp_path)
    code, err = prepare(capsys, "shapes", out, "--size", 8, "--limit", 4)
    assert code == 2 and f"prepare OUT={out}" in err and message in err and "libhdfs" not in err
    assert os.listdir(tmp_path) == []  # no local directory named after the URI


def test_prepare_out_as_a_file_uri(tmp_path, capsys):
    code, err = prepare(capsys, "shapes", f"file://{tmp_path}/crs", "--size", 8, "--limit", 4)
    assert code == 0, err
    assert manifest(tmp_path / "crs" / "train")["count"] == 4
