import os

from PIL import Image

from began_dist.cli import main


def test_sample_writes_grid_interpolations_and_fig4(train_cli, tmp_path, capsys):
    code, run_dir = train_cli("train.steps=4")
    out = tmp_path / "pictures"
    assert main(["sample", run_dir, "--out", str(out), "--n", "16"]) == 0
    names = sorted(os.listdir(out))
    assert names == ["g_vs_decoder.png", "grid.png", "interpolation.png", "mirror.png"]
    grid = Image.open(out / "grid.png")
    assert grid.size == (2 * (4 * 18 + 2),) * 2  # 4 x 4 images of 16 px, 2 px padding, scaled x2
    mirror = Image.open(out / "mirror.png")
    assert mirror.size[0] == 2 * (12 * 18 + 2)  # real, 10 interpolation steps, mirrored real


def test_sample_without_fig4_when_nz_differs_from_nh(train_cli, tmp_path):
    code, run_dir = train_cli("train.steps=2", "model.nh=12")
    assert main(["sample", run_dir, "--out", str(tmp_path / "p"), "--n", "4"]) == 0
    assert "g_vs_decoder.png" not in os.listdir(tmp_path / "p")


def test_sample_needs_a_checkpoint(tmp_path, capsys):
    assert main(["sample", str(tmp_path)]) == 2
    assert "no checkpoints" in capsys.readouterr().err
