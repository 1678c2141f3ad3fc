"""benchmarks/gpu_check.py: its CPU dry run goes through every stage (what proves the script
works before a GPU is lent), and without CUDA the GPU run says so and exits 0."""

import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_check.py")


def run_check(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_cpu_dry_run_passes_every_stage(tmp_path):
    done = run_check("--out", str(tmp_path), "--device", "cpu", "--smoke")
    assert done.returncode == 0, done.stdout + done.stderr
    with open(tmp_path / "gpu_check.json") as handle:
        summary = json.load(handle)
    stages = {stage["name"]: stage for stage in summary["stages"]}
    assert list(stages) == ["cuda_tests", "step_equivalence", "step_speed", "ray_train"]
    assert all(stage["status"] == "passed" for stage in stages.values()), stages
    # each stage really ran what it names
    assert stages["cuda_tests"]["details"].get("skipped", 0) >= 1  # the CUDA-marked tests, skipped on a CPU
    assert stages["step_equivalence"]["details"]["passed"] >= 10
    rows = stages["step_speed"]["details"]["rows"]
    assert set(rows) == {"16 px skip alternating", "16 px skip simultaneous"}
    assert all(row["ours_over_ref"] > 0 and row["need_gflops"] > 0 for row in rows.values())
    assert stages["ray_train"]["details"]["steps"] == 4
    table = (tmp_path / "gpu_check.txt").read_text()
    assert "all stages passed" in table and table.strip() in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    done = run_check("--out", str(tmp_path / "out"))
    assert done.returncode == 0
    assert "no CUDA device" in done.stdout
    assert not (tmp_path / "out").exists()
