"""The run-directory storage layer on local paths (real files)."""

import json
import os

import pytest
import torch

from began_dist import storage


def test_join_and_names_for_local_paths_and_uris(tmp_path):
    assert storage.join(str(tmp_path), "checkpoints", "a.pt") == os.path.join(str(tmp_path), "checkpoints", "a.pt")
    assert storage.join("s3://bucket/runs/x", "checkpoints", "a.pt") == "s3://bucket/runs/x/checkpoints/a.pt"
    assert storage.join("s3://bucket/runs/x/", "tb") == "s3://bucket/runs/x/tb"
    assert storage.basename("s3://bucket/runs/x/") == "x" and storage.basename(str(tmp_path / "run")) == "run"
    assert storage.is_uri("gs://b/x") and not storage.is_uri(str(tmp_path)) and not storage.is_uri("runs/s3:x")
    assert storage.resolve("s3://bucket/x") == "s3://bucket/x"
    assert storage.resolve("runs/x") == os.path.abspath("runs/x")


def test_write_read_exists_list_delete(tmp_path):
    run = str(tmp_path / "run")
    storage.makedirs(storage.join(run, "samples"))
    assert storage.isdir(storage.join(run, "samples")) and not storage.isfile(storage.join(run, "samples"))
    path = storage.write_text(storage.join(run, "config.yaml"), "a: 1\n")
    assert storage.read_text(path) == "a: 1\n" and storage.exists(path) and storage.isfile(path)
    storage.write_bytes(storage.join(run, "b.bin"), b"\x00\x01")  # a parent that exists
    storage.write_bytes(storage.join(run, "deep", "c.bin"), b"x")  # parents are made
    assert storage.listdir(run) == ["b.bin", "config.yaml", "deep", "samples"]
    assert storage.glob(run, "*.yaml") == [path]
    assert storage.listdir(storage.join(run, "missing")) == []
    storage.delete(path)
    storage.delete(storage.join(run, "deep"))
    storage.delete(storage.join(run, "never-was"))  # not an error
    assert not storage.exists(path) and storage.listdir(run) == ["b.bin", "samples"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(path)


def test_file_uri_is_the_local_file(tmp_path):
    storage.write_text(f"file://{tmp_path}/x.txt", "hi")
    assert (tmp_path / "x.txt").read_text() == "hi"
    assert storage.listdir(f"file://{tmp_path}") == ["x.txt"]


def test_failing_write_leaves_the_old_file_and_no_partial_file(tmp_path):
    path = str(tmp_path / "stats.jsonl")
    storage.write_text(path, "old\n")
    with pytest.raises(RuntimeError, match="midway"):
        with storage.atomic_writer(path) as handle:
            handle.write(b"new content, half written")
            raise RuntimeError("midway")
    assert (tmp_path / "stats.jsonl").read_text() == "old\n"
    assert os.listdir(tmp_path) == ["stats.jsonl"]  # the temporary file is gone too
    with pytest.raises(RuntimeError):
        with storage.atomic_writer(str(tmp_path / "new.bin")) as handle:
            handle.write(b"x" * 100_000)
            raise RuntimeError("midway")
    assert os.listdir(tmp_path) == ["stats.jsonl"]  # no file under the new name


def test_temporary_file_sits_beside_the_target_until_the_rename(tmp_path):
    path = str(tmp_path / "checkpoints" / "step-00000001.pt")
    with storage.atomic_writer(path) as handle:
        handle.write(b"abc")
        handle.flush()
        (temporary,) = os.listdir(tmp_path / "checkpoints")
        assert temporary.startswith(".step-00000001.pt.") and temporary.endswith(".tmp")
        assert not os.path.exists(path)
    assert os.listdir(tmp_path / "checkpoints") == ["step-00000001.pt"]


def test_append_creates_then_appends(tmp_path):
    path = str(tmp_path / "logs" / "log.txt")
    appender = storage.Appender(path)
    appender.write("one\n")
    appender.write("two\n")
    appender.flush()
    storage.append_text(path, "three\n")
    assert (tmp_path / "logs" / "log.txt").read_text() == "one\ntwo\nthree\n"


def test_truncate_jsonl_drops_later_steps_and_a_torn_line(tmp_path):
    path = tmp_path / "stats.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (2, 4, 6)) + '{"step": 8, "L')
    assert storage.truncate_jsonl(str(path), 4) == 2
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [2, 4]
    assert storage.truncate_jsonl(str(tmp_path / "none.jsonl"), 4) is None


def test_torch_roundtrip_is_weights_only(tmp_path):
    path = storage.save_torch({"w": torch.arange(3.0), "step": 3}, str(tmp_path / "a.pt"))
    loaded = storage.load_torch(path)
    assert torch.equal(loaded["w"], torch.arange(3.0)) and loaded["step"] == 3
    torch.save({"evil": os.system}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="[Ww]eights only"):
        storage.load_torch(str(tmp_path / "evil.pt"))


def test_local_dir_for_self_writing_tools(tmp_path):
    assert storage.local_dir(str(tmp_path / "tb")) == str(tmp_path / "tb") and (tmp_path / "tb").is_dir()
    with pytest.raises(ValueError, match="local directory"):
        storage.local_dir("s3://bucket/run/tb")


def test_unsupported_schemes_are_refused_before_pyarrow(tmp_path):
    with pytest.raises(ValueError, match="hdfs://"):
        storage.exists("hdfs://namenode/runs/x")
