"""An object store that fails: a moto S3 server on 127.0.0.1 (tests/moto_store.py) that goes away for a
while (retried, the run goes on) or refuses writes (the run stops with exit 4, nothing lost)."""

import json
import time

import pytest
from helpers import TINY

from began_dist import storage
from began_dist.cli import main
from began_dist.train import state as ckpt


def test_an_outage_shorter_than_the_retries_is_ridden_through(s3_store):
    """The store unreachable (connection refused) for 2 s: a write and a read made meanwhile wait and succeed."""
    path = s3_store.under("outage", "a.txt")
    storage.write_text(path, "before")
    started = time.monotonic()
    back = s3_store.outage(2.0)
    storage.write_text(s3_store.under("outage", "b.txt"), "during")
    assert time.monotonic() - started >= 2.0  # the write waited for the store
    back.join()
    s3_store.outage(1.0)
    assert storage.read_text(path) == "before"
    assert storage.listdir(s3_store.under("outage")) == ["a.txt", "b.txt"]


def test_a_refusal_is_not_retried_and_names_the_path(s3_store):
    s3_store.deny_writes("refused/")
    try:
        with pytest.raises(storage.StorageError, match=r"cannot write s3://runs/refused/x: .*ACCESS_DENIED"):
            storage.write_text(s3_store.under("refused", "x"), "no")
    finally:
        s3_store.allow_writes()
    assert not storage.exists(s3_store.under("refused", "x"))


def steps_logged(run_dir: str) -> list[int]:
    return [json.loads(line)["step"] for line in storage.read_text(storage.join(run_dir, "stats.jsonl")).splitlines()]


def test_a_store_that_refuses_writes_stops_the_run_with_exit_4_and_loses_nothing(s3_store, capsys):
    """The checkpoint upload (in the background) refused: the loop's storage check stops the run (exit 4)
    naming run.dir; then every write refused: the same at the first write. Once the store takes writes
    again, --resume continues from the last good checkpoint and logs every step once."""
    run_dir = s3_store.under("denied")
    assert main(["train", *TINY, "train.steps=4", f"run.dir={run_dir}"]) == 0
    s3_store.deny_writes("denied/checkpoints/")
    try:  # the upload of step 8's checkpoint fails in the background, seen at step 10's or 12's check
        assert main(["train", "--resume", run_dir, "train.steps=12"]) == 4
    finally:
        s3_store.allow_writes()
    err = capsys.readouterr().err
    assert "run.dir=s3://runs/denied: cannot write s3://runs/denied/checkpoints/step-00000008.pt" in err, err[-2000:]
    assert "ACCESS_DENIED" in err and "last good checkpoint" in err and "Traceback" not in err
    assert [step for step, _ in ckpt.list_checkpoints(run_dir)] == [4]
    assert ckpt.verify_checkpoint(ckpt.latest_checkpoint(run_dir))[0]["step"] == 4

    s3_store.deny_writes()  # the whole bucket: config.yaml, the first write, is refused
    try:
        assert main(["train", "--resume", run_dir, "train.steps=12"]) == 4
    finally:
        s3_store.allow_writes()
    assert "run.dir=s3://runs/denied: cannot write s3://runs/denied" in capsys.readouterr().err

    assert main(["train", "--resume", run_dir, "train.steps=12"]) == 0
    assert [step for step, _ in ckpt.list_checkpoints(run_dir)] == [4, 8, 12]
    assert steps_logged(run_dir) == [2, 4, 6, 8, 10, 12]


@pytest.mark.parametrize("message, refusal", [
    ("When uploading part for key 'x': AWS Error ACCESS_DENIED during UploadPart operation: denied", "ACCESS_DENIED"),
    ("AWS Error NO_SUCH_BUCKET during CreateMultipartUpload operation: The specified bucket does not exist",
     "NO_SUCH_BUCKET"),
    ("AWS Error UNKNOWN (HTTP status 403) during PutObject operation: QuotaExceeded", "UNKNOWN"),
    ("AWS Error NETWORK_CONNECTION during PutObject operation: curlCode: 7, Could not connect to server", None),
    ("AWS Error SLOW_DOWN during PutObject operation: Please reduce your request rate", None),
    ("AWS Error UNKNOWN (HTTP status 503) during PutObject operation: unavailable", None),
    ("AWS Error UNKNOWN (HTTP status 429) during PutObject operation: too many", None),
])
def test_what_counts_as_a_refusal(message, refusal):
    """Refusals stop the run (exit 4); what the SDK gave up retrying is raised for Ray to restart the group."""
    assert storage.store_refusal(OSError(message)) == refusal
    assert (storage.permanent_write_error(RuntimeError("wrapped")) is None)
