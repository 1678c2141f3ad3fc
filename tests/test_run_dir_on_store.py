"""A run directory on an S3 object store: a moto server speaking the real S3 protocol on 127.0.0.1.

Local mode (run.workers=0) end to end: train, --resume, and the commands that read a run
directory (sample, eval, report) given the s3:// URI.
"""

import json
import os

import pytest
import torch
from helpers import TINY

from began_dist import storage
from began_dist.cli import main
from began_dist.train import state as ckpt


@pytest.fixture(scope="module")
def store(s3_store):
    """`s3://runs?endpoint...` of a bucket on a moto server bound to 127.0.0.1 (conftest.py)."""
    return s3_store.uri


def under(store: str, *parts: str) -> str:
    return storage.join(store, *parts)


def test_join_keeps_the_query_after_the_path():
    uri = "s3://b/runs?endpoint_override=h:1&scheme=http"
    assert storage.join(uri, "x", "a.pt") == "s3://b/runs/x/a.pt?endpoint_override=h:1&scheme=http"
    assert storage.basename(storage.join(uri, "x")) == "x"
    assert storage.dirname(storage.join(uri, "x")) == uri
    assert storage.display(uri) == "s3://b/runs"


def test_appender_uploads_whole_on_flush(store):
    path = under(store, "append", "log.txt")
    log = storage.Appender(path)
    log.write("a\n")
    log.write("b\n")
    assert not storage.exists(path)  # held until flushed (object stores cannot append)
    log.flush()
    assert storage.read_text(path) == "a\nb\n"
    again = storage.Appender(path)  # a new writer (a resumed run) continues the object
    again.write("c\n")
    again.flush()
    assert storage.read_text(path) == "a\nb\nc\n"


def test_train_resume_and_read_a_run_on_the_store(store, tmp_path, capsys):
    run_dir = under(store, "r1")
    assert main(["train", *TINY, "train.steps=4", f"run.dir={run_dir}"]) == 0
    assert not (tmp_path / "s3:").exists()  # the URI was never taken for a local path
    for name in ("config.yaml", "log.txt", "stats.jsonl", "samples/step-00000004.png"):
        assert storage.isfile(under(run_dir, name)), name
    assert [step for step, _ in ckpt.list_checkpoints(run_dir)] == [4]
    assert storage.glob(under(run_dir, "tb"), "events.out.tfevents.*")  # TensorBoard files uploaded
    assert not storage.exists(under(run_dir, "ray"))  # local mode: no Ray copies at all

    # a second run into the same URI is refused; --resume continues it
    assert main(["train", *TINY, "train.steps=4", f"run.dir={run_dir}"]) == 2
    assert "already has checkpoints" in capsys.readouterr().err
    assert main(["train", "--resume", run_dir, "train.steps=8"]) == 0
    steps = [json.loads(line)["step"] for line in storage.read_text(under(run_dir, "stats.jsonl")).splitlines()]
    assert steps == [2, 4, 6, 8]  # every logged step once, across the resume
    assert "resumed from" in storage.read_text(under(run_dir, "log.txt"))
    assert [step for step, _ in ckpt.list_checkpoints(run_dir)][-1] == 8

    # the same run trained on a local disk ends with bitwise the same weights
    local = str(tmp_path / "local")
    assert main(["train", *TINY, "train.steps=4", f"run.dir={local}"]) == 0
    assert main(["train", "--resume", local, "train.steps=8"]) == 0
    remote_state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir))
    local_state = ckpt.load_checkpoint(ckpt.latest_checkpoint(local))
    for key, tensor in local_state["G"].items():
        assert torch.equal(tensor, remote_state["G"][key]), key

    capsys.readouterr()
    out = str(tmp_path / "samples")
    assert main(["sample", run_dir, "--n", "4", "--out", out]) == 0
    assert any(p.suffix == ".png" for p in (tmp_path / "samples").iterdir())
    assert main(["eval", run_dir, "--metrics", "swd", "--n", "16"]) == 0
    assert storage.isfile(under(run_dir, "metric-swd.jsonl"))
    assert main(["report", run_dir]) == 0


def test_unsupported_run_dir_scheme_is_refused_naming_run_dir(capsys):
    assert main(["train", *TINY, "run.dir=hdfs://nn/runs/x"]) == 2
    assert "run.dir=hdfs://nn/runs/x" in capsys.readouterr().err


def test_ray_and_tune_get_a_reference_to_a_checkpoint_on_the_store(store):
    """Stored once: what Ray or Tune copies into its storage is a reference to the run's own file."""
    from ray.train import Checkpoint

    from began_dist.distributed.reporting import ray_candidate, staged

    path = ckpt.write_checkpoint({"step": 6, "w": torch.ones(2)}, ckpt.checkpoint_path(under(store, "ref"), 6))
    with staged(path) as (directory, name):
        assert name == "step-00000006" and os.listdir(directory) == ["step-00000006.pt.uri"]
        step, label, verify, moved = ray_candidate(Checkpoint.from_directory(directory), "Tune checkpoint")
    assert (step, moved) == (6, None) and label.endswith("-> s3://runs/ref/checkpoints/step-00000006.pt")
    assert verify()[0]["step"] == 6
    storage.delete(path)
    assert verify()[0] is None  # the file is gone: the reporter falls back to the run directory's own
