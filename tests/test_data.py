import numpy as np
import pytest
import torch
from PIL import Image

from began_dist.cli import main
from began_dist.config import load_config
from began_dist.data import DataError, build_dataset, sources
from began_dist.data.sampler import GlobalBatchSampler, LatentSource


def test_glyphs_are_deterministic_real_characters():
    images, chars = sources.render_glyphs(32, 20)
    again, chars_again = sources.render_glyphs(32, 20)
    assert images.shape == (20, 32, 32, 1) and images.dtype == np.uint8
    assert chars == chars_again and chars[0] == "\u4e00" and np.array_equal(images, again)
    assert len({im.tobytes() for im in images}) == 20  # every glyph differs (no .notdef boxes)


def test_crs_shapes_cover_the_spec_grid_with_labels():
    images, labels = sources.crs_shapes(64, ["square+cross", "square"])
    assert images.shape == (2 * 11_760, 64, 64, 1)
    assert labels[:11_760].tolist() == [[1, 1]] * 11_760 and labels[11_760:].tolist() == [[0, 1]] * 11_760
    cross = sources.crs_image("cross", 32, 32, 18, 0, 2)
    assert cross[32, 32] == 255 and cross[32 - 17, 32] == 255 and cross[20, 20] == 0
    square = sources.crs_image("square", 32, 32, 18, 0, 2)
    assert square[32, 32] == 0 and square[32, 32 - 17] == 255


def test_folder_source_recursive_sorted_with_class_labels(tmp_path):
    for cls, colour in (("b_red", (255, 0, 0)), ("a_blue", (0, 0, 255))):
        (tmp_path / cls / "deep").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 30), colour).save(tmp_path / cls / "deep" / f"{i}.png")
    Image.new("RGBA", (20, 20), (0, 255, 0, 128)).save(tmp_path / "b_red" / "rgba.png")
    images, labels = sources.image_folder(str(tmp_path), 16, 3)
    assert images.shape == (7, 16, 16, 3)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 1]  # sorted class folders: a_blue = 0, b_red = 1
    assert tuple(images[0, 8, 8]) == (0, 0, 255) and tuple(images[3, 8, 8]) == (255, 0, 0)
    grey, _ = sources.image_folder(str(tmp_path), 16, 1)
    assert grey.shape == (7, 16, 16, 1)


def test_unreadable_image_is_named(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png"):
        sources.image_folder(str(tmp_path), 16, 1)


def test_train_on_a_folder(tmp_path, train_cli):
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    code, run_dir = train_cli("data.source=folder", f"data.path={tmp_path}", "train.steps=2")
    assert code == 0


def test_too_few_images_for_a_batch(tmp_path, capsys):
    Image.new("L", (8, 8)).save(tmp_path / "one.png")
    code = main(["train", "data.source=folder", f"data.path={tmp_path}", f"run.dir={tmp_path / 'run'}"])
    assert code == 2 and "fewer than train.batch_size" in capsys.readouterr().err


def test_dataset_yields_model_sized_uint8_batches():
    cfg = load_config(None, ["data.source=shapes", "data.limit=40", "model.image_size=32", "train.batch_size=8"])
    dataset = build_dataset(cfg)
    batch = dataset.batch(torch.arange(8))
    assert len(dataset) == 40 and batch.shape == (8, 1, 32, 32) and batch.dtype == torch.uint8
    assert dataset.labels.shape == (40, 2)


@pytest.mark.parametrize("world", [2, 4])
def test_workers_split_the_global_batch_and_latents(world):
    single = GlobalBatchSampler(50, 8, seed=3)
    workers = [GlobalBatchSampler(50, 8, seed=3, rank=r, world=world) for r in range(world)]
    for _ in range(20):  # crosses epochs (6 batches of 8 in 50 images)
        assert torch.equal(torch.cat([w.next_indices() for w in workers]), single.next_indices())
    z_single = LatentSource(3, 5, 8).next(2, torch.device("cpu"))
    z_parts = [LatentSource(3, 5, 8, r, world).next(2, torch.device("cpu")) for r in range(world)]
    assert torch.equal(torch.cat(z_parts, dim=1), z_single)


def test_sampler_resumes_at_the_same_image_with_another_world_size():
    straight = GlobalBatchSampler(50, 8, seed=1)
    first = [straight.next_indices() for _ in range(9)]
    half = GlobalBatchSampler(50, 8, seed=1)
    for _ in range(5):
        half.next_indices()
    pair = [GlobalBatchSampler(50, 8, seed=1, rank=r, world=2) for r in range(2)]
    for sampler in pair:
        sampler.load_state_dict(half.state_dict())
    for expected in first[5:]:
        assert torch.equal(torch.cat([s.next_indices() for s in pair]), expected)
    epochs = {tuple(sorted(torch.cat(first[:6]).tolist()))}
    assert len(epochs) == 1 and len(set(torch.cat(first[:6]).tolist())) == 48  # no repeats within an epoch
