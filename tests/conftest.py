import os

import pytest
import torch

from began_dist.cli import main

# Tiny runs: 16 px, a few filters, few glyphs. Steps are what each test sets.
TINY = [
    "model.image_size=16",
    "model.filters=8",
    "model.nz=8",
    "model.nh=8",
    "model.convs_per_scale=1",
    "data.glyphs=64",
    "train.batch_size=4",
    "train.log_every=2",
    "train.sample_every=4",
    "train.checkpoint_every=4",
]


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "slow: longer end-to-end runs")
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def train_cli(tmp_path):
    """Run `began-dist train` in-process on a tiny config; returns (exit code, run dir)."""

    def run(*overrides, run_dir=None, resume=False):
        run_dir = str(run_dir or tmp_path / "run")
        if resume:
            args = ["train", "--resume", run_dir, *overrides]
        else:
            args = ["train", *TINY, f"run.dir={run_dir}", *overrides]
        return main(args), run_dir

    return run
