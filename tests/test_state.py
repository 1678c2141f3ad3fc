import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from began_dist.train import state as ckpt


def small_state(value: float) -> dict:
    return {"G": {"w": torch.full((4,), value)}, "step": int(value), "k_t": torch.tensor(value)}


def test_save_and_load_roundtrip_with_weights_only(tmp_path):
    path = ckpt.save_checkpoint(small_state(3.0), str(tmp_path), 3, keep=2)
    assert os.path.basename(path) == "step-00000003.pt"
    loaded = ckpt.load_checkpoint(path)
    assert torch.equal(loaded["G"]["w"], torch.full((4,), 3.0)) and loaded["step"] == 3


def test_keeps_only_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(small_state(step), str(tmp_path), step, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [3, 4]


def test_failed_write_leaves_previous_checkpoint_and_no_partial_file(tmp_path):
    ckpt.save_checkpoint(small_state(1.0), str(tmp_path), 1, keep=3)
    broken = {"G": {"w": torch.zeros(1_000_000)}, "unpicklable": lambda: None}  # fails after writing tensors
    with pytest.raises((AttributeError, TypeError, RuntimeError)):  # pickling the lambda fails
        ckpt.save_checkpoint(broken, str(tmp_path), 2, keep=3)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-00000001.pt", "step-00000001.pt.sha256"]
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path)))["step"] == 1


def test_write_killed_midway_leaves_previous_checkpoint_loadable(tmp_path):
    ckpt.save_checkpoint(small_state(1.0), str(tmp_path), 1, keep=3)
    # A writer process that saves a large checkpoint slowly; SIGKILL it while the temp file grows.
    script = textwrap.dedent(f"""
        import torch
        from began_dist.train import state as ckpt
        big = {{"G": {{f"w{{i}}": torch.randn(2_000_000) for i in range(40)}}, "step": 2}}
        ckpt.save_checkpoint(big, {str(tmp_path)!r}, 2, keep=3)
    """)
    writer = subprocess.Popen([sys.executable, "-c", script])
    directory = tmp_path / "checkpoints"
    deadline = time.time() + 60
    while time.time() < deadline:
        partial = [f for f in os.listdir(directory) if f.endswith(".tmp")]
        if partial and os.path.getsize(directory / partial[0]) > 1_000_000:
            break
        time.sleep(0.005)
    else:
        writer.kill()
        pytest.fail("the writer never started writing")
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [1]
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path)))["step"] == 1


def test_load_refuses_pickled_code(tmp_path):
    path = tmp_path / "checkpoints" / "step-00000005.pt"
    path.parent.mkdir()
    torch.save({"evil": os.system}, path)  # a checkpoint that would call code when unpickled in full
    with pytest.raises(Exception, match="[Ww]eights only"):
        ckpt.load_checkpoint(str(path))


def test_going_back_to_an_earlier_step_drops_the_later_history(tmp_path):
    # A PBT exploit restores a donor's step-4 state into a trial that had reached step 20.
    for step in (4, 8, 12, 16, 20):
        ckpt.save_checkpoint(small_state(step), str(tmp_path), step, keep=3)
    path = ckpt.save_checkpoint(small_state(8.0), str(tmp_path), 8, keep=3)
    assert os.path.exists(path) and ckpt.load_checkpoint(path)["step"] == 8
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [8]
