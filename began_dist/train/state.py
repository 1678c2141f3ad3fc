"""Checkpoints: state_dicts and tensors only, written atomically, loaded with weights_only=True.

`RUN_DIR/checkpoints/step-XXXXXXXX.pt` holds the keys of docs/design.md: G, D, opt_G,
opt_D, k_t, step, lr_state, rng, data, fixed_z, config (families add theirs).
A write goes to a temporary file in the same directory, is fsynced, then renamed
over the final name, so a crash leaves either the old set of checkpoints or the
new one, never a partial file under a checkpoint's name.

Each checkpoint carries its sha256 in a sidecar, `step-XXXXXXXX.pt.sha256` (the format
of `sha256sum`, so `sha256sum -c` checks it too), written atomically after the
checkpoint itself. A resume takes the newest checkpoint that verifies and moves the
others aside into `checkpoints/bad/` (never deleted: the bytes may still be worth
something to a person). A checkpoint without a sidecar (written before sidecars
existed, or whose sidecar write was cut short) is accepted when it loads, with a
one-line warning. So `checkpoints/` holds only checkpoints, their sidecars and `bad/`.
"""

from __future__ import annotations

import hashlib
import io
import re
import sys
from collections.abc import Callable
from typing import Optional

import torch

from began_dist import storage
from began_dist.config import ConfigError

CHECKPOINT_DIR = "checkpoints"
BAD_DIR = "bad"  # checkpoints/bad/: checkpoints that failed verification, moved aside
SIDECAR = ".sha256"
_NAME = re.compile(r"step-(\d{8,})\.pt$")


def checkpoint_path(run_dir: str, step: int) -> str:
    return storage.join(run_dir, CHECKPOINT_DIR, f"step-{step:08d}.pt")


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every complete checkpoint, oldest first."""
    return list_checkpoints_in(storage.join(run_dir, CHECKPOINT_DIR))


def list_checkpoints_in(directory: str) -> list[tuple[int, str]]:
    """(step, path) of the step-XXXXXXXX.pt files directly in `directory`, oldest first."""
    found = []
    for path in storage.glob(directory, "step-*.pt"):
        step = step_of(path)
        if step is not None:
            found.append((step, path))
    return sorted(found)


def step_of(path: str) -> Optional[int]:
    """The step of a step-XXXXXXXX.pt path (a URI's ?query ignored), or None."""
    match = _NAME.search(storage.basename(path))
    return int(match.group(1)) if match else None


def latest_checkpoint(run_dir: str) -> Optional[str]:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


class NoGoodCheckpoint(ConfigError):
    """Checkpoints exist but none verifies (exit 2): the message names each one."""


class _HashingWriter:
    """The file torch.save writes through: hashes the bytes as they go, and keeps the OSError a
    failed write raised (torch.save reports it as a RuntimeError of its zip writer)."""

    def __init__(self, file):
        self.file, self.digest, self.error = file, hashlib.sha256(), None

    def write(self, data) -> int:
        try:
            written = self.file.write(data)
        except OSError as error:
            self.error = self.error or error
            raise
        self.digest.update(memoryview(data)[: len(data) if written is None else written])
        return written

    def flush(self) -> None:
        self.file.flush()


def sidecar_path(path: str) -> str:
    """step-XXXXXXXX.pt.sha256 beside `path` (a URI's ?query stays at the end)."""
    return storage.join(storage.dirname(path), storage.basename(path) + SIDECAR)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with storage.open_binary(path) as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checkpoint(state: dict, path: str) -> str:
    """torch.save `state` to `path` atomically, then its sha256 sidecar; a permanent write error
    (disk full, file too large) raises storage.StorageError naming the file, leaving nothing behind."""
    with storage.writing(path):
        with storage.atomic_writer(path) as handle:
            writer = _HashingWriter(handle)
            try:
                torch.save(state, writer)
            except RuntimeError:
                if writer.error is not None:
                    raise writer.error from None
                raise
    write_sidecar(path, writer.digest.hexdigest())
    return path


def write_sidecar(path: str, sha256: str) -> None:
    """`path`'s sha256 sidecar, written after it; if that fails the checkpoint goes too (a checkpoint
    is written with its checksum or not at all)."""
    sidecar = sidecar_path(path)
    try:
        with storage.writing(sidecar):
            storage.write_text(sidecar, f"{sha256}  {storage.basename(path)}\n")
    except BaseException:
        storage.delete(path)
        raise


class BadCheckpoint(ConfigError):
    """A checkpoint that does not match its sha256 sidecar (exit 2 where a command loads it)."""

    def __init__(self, message: str, why: str = ""):
        super().__init__(message)
        self.why = why or message


def _sidecar_mismatch(path: str) -> str:
    """Why `path` does not match its sidecar ('' when it does, or has none)."""
    sidecar = sidecar_path(path)
    if not storage.exists(sidecar):
        return ""
    expected = storage.read_text(sidecar).split()[:1]
    actual = file_sha256(path)
    return "" if expected == [actual] else f"sha256 {actual[:12]}... does not match {storage.basename(sidecar)}"


def verify_checkpoint(path: str) -> tuple[Optional[dict], str]:
    """(state, '') when `path` matches its sidecar and loads; (None, why not) otherwise.

    Without a sidecar the checkpoint is accepted when it loads (with a warning on stderr).
    """
    if not storage.exists(sidecar_path(path)):
        print(f"began-dist: warning: {path} has no {SIDECAR} sidecar (an older run?): checked by loading it",
              file=sys.stderr, flush=True)
    try:
        return load_checkpoint(path), ""
    except BadCheckpoint as error:
        return None, error.why
    except Exception as error:  # a torn or foreign file: torch's zip reader or the unpickler says so
        first = (str(error).splitlines() or [type(error).__name__])[0].split(". ")[0]  # torch adds advice
        return None, f"does not load: {first}"


def move_aside(path: str) -> str:
    """Move a checkpoint that failed verification (and its sidecar) to checkpoints/bad/; never delete it."""
    bad_dir = storage.join(storage.dirname(path), BAD_DIR)
    target, copy = storage.join(bad_dir, storage.basename(path)), 0
    while storage.exists(target):  # an earlier bad file of the same step stays too
        copy += 1
        target = storage.join(bad_dir, f"{storage.basename(path)}.{copy}")
    storage.move(path, target)
    if storage.exists(sidecar_path(path)):
        storage.move(sidecar_path(path), sidecar_path(target))
    return target


def newest_verified(
    candidates: list[tuple[int, str, Callable[[], tuple[Optional[dict], str]], Optional[str]]],
    warn: Callable[[str], None],
) -> tuple[Optional[dict], Optional[str], int]:
    """The newest candidate that verifies: (state, label, step); (None, None, -1) when there are none.

    `candidates`: (step, label, verify() -> (state, why not), path to move aside or None), in any
    order. Each bad one is named through `warn` and, when it has a path, moved to bad/. When
    candidates exist but none verifies, NoGoodCheckpoint names them all.
    """
    bad = []
    for step, label, verify, path in sorted(candidates, key=lambda item: item[0], reverse=True):
        state, why = verify()
        if state is not None:
            return state, label, step
        where = f"; moved to {move_aside(path)}" if path else ""
        warn(f"checkpoint {label} is bad ({why}){where}; trying an older one")
        bad.append(f"{label} ({why}{where})")
    if bad:
        raise NoGoodCheckpoint("no checkpoint verifies, nothing to resume from: " + "; ".join(bad))
    return None, None, -1


def run_dir_candidates(run_dir: str) -> list:
    """The candidates of newest_verified for the checkpoints in RUN_DIR/checkpoints."""
    return [(step, path, (lambda p=path: verify_checkpoint(p)), path) for step, path in list_checkpoints(run_dir)]


def warn_stderr(message: str) -> None:
    print(f"began-dist: warning: {message}", file=sys.stderr, flush=True)


def save_checkpoint(state: dict, run_dir: str, step: int, keep: int,
                    writer: Optional[storage.BackgroundWriter] = None) -> str:
    """Write `state` atomically as step-XXXXXXXX.pt with its sidecar, then keep only the newest `keep`.

    Checkpoints of later steps than `step` are dropped first: they belong to a history the run
    went back from (a PBT exploit restores the donor's earlier step into a trial that had gone
    further), and counting them as newer would delete the checkpoint just written.

    With a `writer`, `state` is serialised here (the snapshot of this step) and the upload and
    the pruning run in its background thread: training goes on while an object store receives it.
    """
    final = checkpoint_path(run_dir, step)
    if writer is None:
        write_checkpoint(state, final)
        _prune(run_dir, step, keep)
        return final
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()

    def upload() -> None:
        with storage.writing(final):
            storage.write_bytes(final, data)
        write_sidecar(final, hashlib.sha256(data).hexdigest())
        _prune(run_dir, step, keep)

    writer.submit(upload)
    return final


def _prune(run_dir: str, step: int, keep: int) -> None:
    found = list_checkpoints(run_dir)
    for _, old in [item for item in found if item[0] > step] + [item for item in found if item[0] <= step][:-keep]:
        storage.delete(old)
        storage.delete(sidecar_path(old))


def load_checkpoint(path: str) -> dict:
    """Check `path` against its sha256 sidecar (BadCheckpoint when it differs), then load it on the
    CPU with weights_only=True: no arbitrary code runs from a checkpoint file."""
    why = _sidecar_mismatch(path)
    if why:
        raise BadCheckpoint(f"{path}: {why}; the file is damaged", why)
    return storage.load_torch(path)


def capture_rng(device: torch.device) -> dict:
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng(rng: dict, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)
