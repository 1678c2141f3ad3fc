"""`began-dist interpolate` and `began-dist arithmetic` on tiny vaegan and BEGAN runs, both latent modes."""

import numpy as np
import pytest
import torch
from helpers import TINY
from PIL import Image

from began_dist.cli import main
from began_dist.eval.commands.arithmetic import COEFFICIENTS, DEFAULT_TRIPLES, read_triples
from began_dist.eval.commands.latent import load_inputs
from began_dist.images import to_uint8
from began_dist.train.runs import load_run

FAMILIES = {"vaegan": ["model.nh=64", "model.family=vaegan"], "began": []}
SIZE, PAD, SCALE = 16, 2, 2  # TINY's image size; save_grid's padding; the commands' scale


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-step run of each family."""
    made = {}
    for family, overrides in FAMILIES.items():
        run_dir = str(tmp_path_factory.mktemp(family) / "run")
        assert main(["train", *TINY, *overrides, "train.steps=2", f"run.dir={run_dir}"]) == 0
        made[family] = run_dir
    return made


def cells(path: str, scale: int = SCALE) -> np.ndarray:
    """A saved grid as (rows, columns, H, W) uint8 cells."""
    grid = np.asarray(Image.open(path))[::scale, ::scale]
    rows, columns = (grid.shape[0] - PAD) // (SIZE + PAD), (grid.shape[1] - PAD) // (SIZE + PAD)
    return np.array(
        [
            [grid[PAD + r * (SIZE + PAD) :][:SIZE, PAD + c * (SIZE + PAD) :][:, :SIZE] for c in range(columns)]
            for r in range(rows)
        ]
    )


def latent_command(capsys, *args: str, latent: str, out) -> list[str]:
    """Run a latent command (few inversion steps: fast, and enough to exercise the path); the paths it printed."""
    assert main([*args, "--latent", latent, "--out", str(out), "--invert-steps", "20"]) == 0
    return capsys.readouterr().out.split()


def rendered(run_dir: str, items: list[str]) -> np.ndarray:
    cfg, _, _ = load_run(run_dir)
    return to_uint8(load_inputs(cfg, items, torch.device("cpu")))[:, 0].numpy()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("latent", ["encoder", "invert"])
def test_interpolate_writes_the_pair_and_mirror_rows_with_real_ends(runs, tmp_path, capsys, family, latent):
    out = tmp_path / "out"
    printed = latent_command(capsys, "interpolate", runs[family], "酪", "鉸", "--steps", "5", latent=latent, out=out)
    assert printed == [str(out / f"interpolate-{latent}.png"), str(out / f"mirror-{latent}.png")]
    a, b = rendered(runs[family], ["酪", "鉸"])
    pair = cells(printed[0])
    assert pair.shape[:2] == (1, 7)  # A, 5 decodes, B
    assert np.array_equal(pair[0, 0], a) and np.array_equal(pair[0, -1], b)
    assert not np.array_equal(pair[0, 1], pair[0, -2])  # the two reconstructions come from different latents
    mirror = cells(printed[1])
    assert mirror.shape[:2] == (2, 7)
    assert np.array_equal(mirror[1, 0], b) and np.array_equal(mirror[1, -1], b[:, ::-1])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("latent", ["encoder", "invert"])
def test_arithmetic_writes_the_four_panel_figure(runs, tmp_path, capsys, family, latent):
    a, b, c = rendered(runs[family], ["住", "注", "洋"])
    paths = []
    for name, image in zip("abc", (a, b, c)):
        paths.append(str(tmp_path / f"{name}.png"))
        Image.fromarray(image).save(paths[-1])
    triples = tmp_path / "triples.txt"
    triples.write_text("# characters, then image files\n酪鉻鉸\n\n" + " ".join(paths) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    printed = latent_command(capsys, "arithmetic", runs[family], "--triples", str(triples), latent=latent, out=out)
    assert printed == [str(out / f"arithmetic-{latent}-{n:02d}.png") for n in (0, 1)]
    figure = cells(printed[1], scale=3)
    assert figure.shape[:2] == (4, len(COEFFICIENTS))  # inputs; reconstructions; a (zA - zB + zC); pixels
    for column, image in enumerate((a, b, c)):
        assert np.array_equal(figure[0, column], image)
    pixel = np.clip(a.astype(int) - b.astype(int) + c.astype(int), 0, 255)  # A - B + C on [0, 255] = on [-1, 1]
    assert np.abs(figure[3, 0].astype(int) - pixel).max() <= 1  # rounding of the [-1, 1] round trip
    assert (figure[3, 1:] == 0).all() and (figure[0, 3:] == 0).all()  # empty cells at the background
    assert len({figure[2, k].tobytes() for k in range(len(COEFFICIENTS))}) == len(COEFFICIENTS)


def test_default_triples_include_the_seed_example():
    assert ["酪", "鉻", "鉸"] in read_triples(DEFAULT_TRIPLES)


def test_bad_inputs_are_refused_with_exit_2(runs, tmp_path, capsys):
    triples = tmp_path / "bad.txt"
    triples.write_text("酪鉻鉸\n酪鉻\n", encoding="utf-8")
    assert main(["arithmetic", runs["vaegan"], "--triples", str(triples)]) == 2
    assert "line 2" in capsys.readouterr().err
    assert main(["interpolate", runs["began"], "酪", "no-such-file.png"]) == 2
    assert "no-such-file.png" in capsys.readouterr().err
    assert main(["interpolate", str(tmp_path / "nothing"), "酪", "鉸"]) == 2
    assert "no checkpoints" in capsys.readouterr().err
