"""run.min_workers: the elastic range's refusals (before any work, no Ray), and its placement check on the
session's one-host cluster. The range following a cluster's hosts is tests/test_testbed_elastic.py."""

import pytest
from helpers import TINY

from began_dist.cli import main
from began_dist.config import ConfigError, load_config, worker_range
from began_dist.distributed.elastic import scaling_workers


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["--workers", "3", "run.min_workers=4"], "run.min_workers=4: must be <= run.workers=3"),
        (["--workers", "3", "run.min_workers=0"], "run.min_workers=0: must be >= 1"),
        (["run.min_workers=1"], "run.min_workers=1: must be <= run.workers=0"),  # local mode has no range
        (["--workers", "2", "run.min_workers=1", "run.resize_interval_s=-1"], "run.resize_interval_s=-1.0"),
        # 4 images split over 1 and 2 workers, not over 3: named, with the counts that work
        (
            ["--workers", "3", "run.min_workers=1"],
            "train.batch_size=4: must split evenly over every worker count from run.min_workers=1 to "
            "run.workers=3, not over 3; it splits over 1, 2 workers only. Narrow the range, or use a multiple of 6",
        ),
        (["--workers", "4", "run.min_workers=3", "train.batch_size=8"], "not over 3; it splits over 4 workers only"),
    ],
)
def test_a_bad_range_is_refused_before_any_work(tmp_path, capsys, overrides, named):
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, f"run.dir={run_dir}", *overrides]) == 2
    assert named in capsys.readouterr().err
    assert not run_dir.exists()  # refused before anything was created or started


def test_ranges_and_fixed_sizes():
    fixed = load_config(None, [*TINY, "run.workers=2"]).run
    assert (worker_range(fixed), scaling_workers(fixed)) == ((2, 2), 2)
    same = load_config(None, [*TINY, "run.workers=2", "run.min_workers=2"]).run
    assert scaling_workers(same) == 2  # min = max: a fixed size
    elastic = load_config(None, [*TINY, "train.batch_size=12", "run.workers=4", "run.min_workers=2"]).run
    assert scaling_workers(elastic) == (2, 4)
    with pytest.raises(ConfigError, match="not over 5"):
        load_config(None, [*TINY, "train.batch_size=12", "run.workers=6", "run.min_workers=2"])


@pytest.mark.ray
def test_the_placement_check_needs_only_the_minimum(ray_cluster):
    """Three `train_slot`s: a range of 3..4 starts (with what fits); 4..5 is refused naming run.min_workers."""
    from began_dist.distributed.placement import check_placement

    slots = ["run.worker_resources.train_slot=1", "train.batch_size=60"]
    check_placement(load_config(None, [*TINY, *slots, "run.workers=4", "run.min_workers=3"]).run)
    with pytest.raises(ConfigError) as refused:
        check_placement(load_config(None, [*TINY, *slots, "run.workers=5", "run.min_workers=4"]).run)
    assert str(refused.value).startswith("run.min_workers: cannot place 4 workers")
    assert "room for 3 of them" in str(refused.value)
