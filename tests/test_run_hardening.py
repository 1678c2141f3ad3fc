"""Issue 20's run-side hardening, as a user sees it: bad checkpoints, a full disk, resumed hyperparameters."""

import os
import subprocess
import sys

import pytest
import torch
from helpers import TINY

from began_dist.cli import main
from began_dist.train import state as ckpt


def test_resume_takes_the_newest_checkpoint_that_verifies(train_cli, capsys):
    code, run = train_cli("train.steps=8")
    assert code == 0
    directory = os.path.join(run, "checkpoints")
    os.remove(os.path.join(directory, "step-00000004.pt.sha256"))  # an older run's checkpoint: no sidecar
    with open(os.path.join(directory, "step-00000008.pt"), "r+b") as handle:
        handle.truncate(5000)  # torn newest checkpoint
    capsys.readouterr()
    # Resumed with other Adam betas: the config's are used, not the checkpoint's (0.5, 0.999).
    assert train_cli("train.steps=12", "train.beta1=0.9", "train.beta2=0.99", run_dir=run, resume=True)[0] == 0
    err = capsys.readouterr().err
    assert "step-00000008.pt is bad (sha256" in err and "moved to" in err
    assert "step-00000004.pt has no .sha256 sidecar" in err
    assert sorted(os.listdir(os.path.join(directory, "bad"))) == ["step-00000008.pt", "step-00000008.pt.sha256"]
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    assert state["step"] == 12
    for name in ("opt_G", "opt_D"):
        assert [group["betas"] for group in state[name]["param_groups"]] == [(0.9, 0.99)]
    # Every checkpoint bad: exit 2 naming each, nothing deleted.
    for _, path in ckpt.list_checkpoints(run):
        with open(path, "r+b") as handle:
            handle.truncate(3000)
    assert train_cli("train.steps=16", run_dir=run, resume=True)[0] == 2
    err = capsys.readouterr().err
    assert "no checkpoint verifies" in err and "step-00000012.pt" in err and "step-00000004.pt" in err
    assert "step-00000008.pt.1" in os.listdir(os.path.join(directory, "bad"))  # the earlier bad one kept too
    assert [name for name in os.listdir(directory) if name != "bad"] == []


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit raises EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
from began_dist.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_full_disk_stops_cleanly_with_exit_4(train_cli):
    code, run = train_cli("train.steps=4")
    assert code == 0
    directory = os.path.join(run, "checkpoints")
    stale = os.path.join(directory, ".step-00000004.pt.k3_x9abc.tmp")  # what a killed writer leaves
    foreign = os.path.join(directory, "notes.tmp")  # not ours: left alone
    for path in (stale, foreign):
        open(path, "w").close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", FULL_DISK, "train", "--resume", run, "train.steps=8"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 4, done.stderr[-2000:]
    assert f"cannot write {directory}/step-00000008.pt: File too large" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(os.listdir(directory)) == ["notes.tmp", "step-00000004.pt", "step-00000004.pt.sha256"]
    assert ckpt.verify_checkpoint(os.path.join(directory, "step-00000004.pt"))[0]["step"] == 4


@pytest.mark.parametrize(
    "override, named",
    [
        ("run.dir=hdfs://namenode/runs/x", "run.dir=hdfs://namenode/runs/x: scheme hdfs:// is not supported"),
        ("data.font=${oc.env:AWS_SECRET_ACCESS_KEY,none}", "data.font=${oc.env:AWS_SECRET_ACCESS_KEY,none}: interp"),
        ("train.gamma=${train.lr}", "train.gamma=${train.lr}: interpolations"),
        ("run.gpus_per_worker=0.5", "run.gpus_per_worker=0.5: Ray Train workers on GPUs talk over NCCL"),
    ],
)
def test_config_refusals_name_the_key(tmp_path, capsys, override, named):
    run = tmp_path / "run"
    args = ["train", *TINY, "run.workers=2", override] if "gpus" in override else ["train", *TINY, override]
    if "run.dir" not in override:
        args.append(f"run.dir={run}")
    assert main(args) == 2
    assert named in capsys.readouterr().err
    assert not run.exists()  # refused before any work: nothing written


def test_relative_run_dir_in_a_ray_job_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what `ray job submit` sets for its entrypoint
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "run.dir=runs/x"]) == 2
    assert "run.dir=runs/x: a relative run directory inside a Ray job" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_tune_resume_refuses_overrides_it_would_drop(tmp_path, capsys):
    spec = os.path.join(os.path.dirname(__file__), "..", "tune", "gamma.yaml")
    code = main(["tune", spec, f"run.dir={tmp_path}", "--resume", "train.steps=9", "tune.num_samples=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "these overrides cannot change it: train.steps=9, tune.num_samples=3" in err


@pytest.mark.cuda
def test_deterministic_resume_is_bitwise_on_cuda(train_cli, tmp_path):
    gpu = ["train.device=cuda", "train.deterministic=true"]
    assert train_cli("train.steps=8", *gpu, run_dir=tmp_path / "straight")[0] == 0
    assert train_cli("train.steps=4", *gpu, run_dir=tmp_path / "cut")[0] == 0
    assert train_cli("train.steps=8", run_dir=tmp_path / "cut", resume=True)[0] == 0
    a, b = (ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path / name))) for name in ("straight", "cut"))
    for name in ("G", "D"):
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}.{key}"


@pytest.mark.ray
@pytest.mark.slow
def test_ray_ranks_restore_the_one_checkpoint_rank_0_verified(ray_cluster, tmp_path, capsys):
    run = tmp_path / "ray"
    two_nodes = ["run.workers=2", "run.worker_resources.train_slot=1", "run.controller_failure_limit=1"]
    assert main(["train", *TINY, *two_nodes, "train.steps=8", f"run.dir={run}"]) == 0
    torn = [os.path.join(root, name) for root, _, names in os.walk(run) for name in names
            if name == "step-00000008.pt"]
    assert len(torn) == 1  # stored once, in RUN_DIR/checkpoints: Ray Train gets metrics only (docs/design.md)
    for path in torn:
        with open(path, "r+b") as handle:
            handle.truncate(5000)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--workers", "2", "train.steps=12"]) == 0  # replicas compared
    err = capsys.readouterr().err
    assert "step-00000008.pt is bad" in err
    assert os.path.exists(run / "checkpoints" / "bad" / "step-00000008.pt")
    log = (run / "log.txt").read_text()
    assert "at step 4:" in log.split("resumed from")[1].splitlines()[0]
