"""Tests that need a CUDA device; skipped cleanly without one."""

import pytest
import torch
from test_loop import final_state

from began_dist.train import state as ckpt

pytestmark = pytest.mark.cuda


def test_local_mode_step_on_gpu(train_cli):
    code, run_dir = train_cli("train.steps=4", "train.device=cuda")
    assert code == 0
    state = final_state(run_dir)
    assert torch.isfinite(state["k_t"]) and "cuda" in state["rng"]


def test_cuda_rng_state_roundtrips():
    device = torch.device("cuda")
    torch.cuda.manual_seed(5)
    saved = ckpt.capture_rng(device)
    first = torch.rand(4, device=device)
    ckpt.restore_rng(saved, device)
    assert torch.equal(torch.rand(4, device=device), first)
