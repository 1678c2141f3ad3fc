import json
import os

from helpers import TINY


def test_short_glyph_run_lowers_reconstruction_loss_and_m(train_cli):
    code, run_dir = train_cli(
        *TINY,
        "model.filters=16",
        "model.nz=16",
        "model.nh=16",
        "data.glyphs=512",
        "train.batch_size=16",
        "train.steps=200",
        "train.log_every=5",
        "train.sample_every=100",
        "train.checkpoint_every=200",
    )
    assert code == 0
    with open(os.path.join(run_dir, "stats.jsonl")) as handle:
        lines = [json.loads(line) for line in handle]
    tenth = len(lines) // 10
    for key in ("L_x", "M"):
        first = sum(line[key] for line in lines[:tenth]) / tenth
        last = sum(line[key] for line in lines[-tenth:]) / tenth
        assert last < 0.8 * first, (key, first, last)
    with open(os.path.join(run_dir, "log.txt")) as handle:
        log = handle.read()
    assert "new run: began 16px" in log and "step 200: checkpoint" in log
