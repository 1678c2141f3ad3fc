import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import TINY
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from began_dist.families.base import BEGAN_SCALARS
from began_dist.train import state as ckpt
from began_dist.train.logging import COMMON_SCALARS, stats_keys

STATS_KEYS = stats_keys(BEGAN_SCALARS)  # a BEGAN run's stats.jsonl line
TB_TAGS = {**BEGAN_SCALARS, **COMMON_SCALARS}

# Exercise every piece of state resume has to carry: m_stall windows, the residual carry.
RESUME_KNOBS = ["train.m_stall_window=3", "model.vanishing_residual=true", "model.residual_steps=10"]


def stats_lines(run_dir):
    with open(os.path.join(run_dir, "stats.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def final_state(run_dir):
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir))


def assert_bitwise_equal(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def straight_and_resumed(train_cli, tmp_path, knobs, steps: int) -> tuple[dict, dict, str]:
    """The last checkpoints of a run of `steps` and of one stopped halfway and resumed (checkpoint
    every 4 steps after the resume), and the resumed run's directory."""
    code, straight = train_cli(*knobs, f"train.steps={steps}", run_dir=tmp_path / "straight")
    assert code == 0
    half = [f"train.steps={steps // 2}", "train.checkpoint_every=100"]
    code, resumed = train_cli(*knobs, *half, run_dir=tmp_path / "resumed")
    assert code == 0 and [s for s, _ in ckpt.list_checkpoints(resumed)] == [steps // 2]
    code, _ = train_cli(f"train.steps={steps}", "train.checkpoint_every=4", run_dir=resumed, resume=True)
    assert code == 0
    return final_state(straight), final_state(resumed), resumed


@pytest.mark.parametrize("order", ["alternating", "simultaneous"])
def test_resume_is_bitwise_equal_to_a_straight_run(train_cli, tmp_path, order):
    knobs = [*RESUME_KNOBS, f"train.update_order={order}"]
    a, b, resumed = straight_and_resumed(train_cli, tmp_path, knobs, 12)
    assert a["step"] == b["step"] == 12
    for key in ("G", "D", "opt_G", "opt_D", "k_t", "lr_state", "data", "rng", "fixed_z"):
        assert_bitwise_equal(a[key], b[key], key)
    assert a["k_t"].item() > 0  # k_t moved, so the comparison means something
    steps = [line["step"] for line in stats_lines(resumed)]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # no step recorded twice


def test_checkpoint_has_contract_keys_and_config(train_cli):
    code, run_dir = train_cli("train.steps=4")
    assert code == 0
    state = final_state(run_dir)
    for key in ("G", "D", "opt_G", "opt_D", "k_t", "step", "lr_state", "rng", "data", "fixed_z", "config"):
        assert key in state
    assert state["config"]["model"]["image_size"] == 16 and state["config"]["run"]["dir"] == run_dir
    assert os.path.isfile(os.path.join(run_dir, "config.yaml"))


def test_existing_run_dir_is_refused_without_resume(train_cli, capsys):
    code, run_dir = train_cli("train.steps=4")
    assert code == 0
    before = os.listdir(os.path.join(run_dir, "checkpoints"))
    code, _ = train_cli("train.steps=8", run_dir=run_dir)
    assert code == 2
    assert "--resume" in capsys.readouterr().err
    assert os.listdir(os.path.join(run_dir, "checkpoints")) == before


def test_resume_refuses_a_finished_run_and_a_model_change(train_cli, capsys):
    code, run_dir = train_cli("train.steps=4")
    assert train_cli("train.steps=4", run_dir=run_dir, resume=True)[0] == 2
    assert "already at step 4" in capsys.readouterr().err
    assert train_cli("train.steps=8", "model.filters=16", run_dir=run_dir, resume=True)[0] == 2
    assert "model" in capsys.readouterr().err


def test_non_finite_loss_stops_with_exit_3_and_keeps_last_good_checkpoint(train_cli, capsys):
    code, run_dir = train_cli("train.steps=4")
    good = final_state(run_dir)
    code, _ = train_cli("train.steps=40", "train.lr=1e10", run_dir=run_dir, resume=True)  # diverges at once
    assert code == 3
    err = capsys.readouterr().err
    assert "non-finite loss at step 5" in err and "L_G=nan" in err
    assert [s for s, _ in ckpt.list_checkpoints(run_dir)] == [4]
    assert_bitwise_equal(final_state(run_dir)["G"], good["G"])


def test_tensorboard_scalars_and_images_under_contract_tags(train_cli):
    code, run_dir = train_cli("train.steps=8")
    assert code == 0
    events = EventAccumulator(os.path.join(run_dir, "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert set(TB_TAGS.values()) <= set(tags["scalars"])
    assert {"images/G_fixed", "images/D_real", "images/D_fake"} <= set(tags["images"])
    assert [e.step for e in events.Scalars("equilibrium/M")] == [2, 4, 6, 8]
    lines = stats_lines(run_dir)
    assert [tuple(line) for line in lines] == [STATS_KEYS] * 4
    m_values = [e.value for e in events.Scalars("equilibrium/M")]
    assert m_values == pytest.approx([line["M"] for line in lines])
    assert sorted(os.listdir(os.path.join(run_dir, "samples"))) == ["step-00000004.png", "step-00000008.png"]


def test_resume_purges_later_tensorboard_steps_and_stats(train_cli):
    code, run_dir = train_cli("train.steps=6", "train.checkpoint_every=3", "run.checkpoints_to_keep=5")
    os.remove(ckpt.checkpoint_path(run_dir, 6))  # as if the run died after logging step 6
    code, _ = train_cli("train.steps=6", run_dir=run_dir, resume=True)
    assert code == 0
    assert [line["step"] for line in stats_lines(run_dir)] == [2, 4, 6]
    events = EventAccumulator(os.path.join(run_dir, "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/L_x")] == [2, 4, 6]


def test_sigterm_saves_a_checkpoint_and_exits_130(tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "began_dist",
        "train",
        *TINY,
        "train.steps=100000",
        "train.checkpoint_every=100000",
        f"run.dir={run_dir}",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "stats.jsonl").exists():
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    ((step, path),) = ckpt.list_checkpoints(str(run_dir))
    assert step >= 2 and ckpt.load_checkpoint(path)["step"] == step
    assert "interrupted" in err
