"""How long a checkpoint stalls training: step times around checkpoints, local disk vs an S3 store.

    python benchmarks/checkpoint_stall.py [--steps 40] [--every 10] [--filters 64] [--size 32]

Runs the same local-mode training (run.workers=0) three times and times every step,
counting the checkpoint's own work (serialise, write or hand to the uploader) in the step
that takes it:
  1. run.dir on the local disk (atomic write, fsync, rename in the training thread);
  2. run.dir on S3 (a moto server on 127.0.0.1, the real S3 protocol), the upload done in
     the training thread: the baseline, what a synchronous upload costs;
  3. run.dir on S3 with the background upload (what `train` does for a URI run dir).
It prints one table: the median step, the median checkpoint step, and the stall (their
difference). moto runs in a process of its own on the same machine, so its work still
competes with training for the CPU: the S3 figures are an upper bound for a remote store.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from began_dist import storage
from began_dist.config import to_container
from began_dist.train import loop
from began_dist.train.preflight import train_config


def timed_run(run_dir: str, args, background: bool) -> tuple[float, float]:
    cfg = train_config(None, [
        f"model.image_size={args.size}", f"model.filters={args.filters}", "data.glyphs=256",
        "train.batch_size=8", f"train.steps={args.steps}", f"train.checkpoint_every={args.every}",
        "train.log_every=5", f"train.sample_every={args.steps}", f"run.dir={run_dir}",
    ])
    trainer = loop.Trainer(to_container(cfg))
    if not background:
        trainer.uploads = None
    ends: list[float] = []
    one_step, save = trainer._one_step, trainer.save

    def timed_step():
        out = one_step()
        ends.append(time.perf_counter())
        return out

    def timed_save(*a, **k):
        save(*a, **k)
        ends[-1] = time.perf_counter()  # the checkpoint's work counts in its step

    trainer._one_step, trainer.save = timed_step, timed_save
    assert loop.run_trainer(trainer, progress=False).ok
    durations = [b - a for a, b in zip(ends, ends[1:])]  # duration of step i+2
    ckpt_steps = {s for s in range(args.every, args.steps, args.every)}
    at_ckpt = [d for i, d in enumerate(durations, start=2) if i - 1 in ckpt_steps]  # the step after saving
    plain = [d for i, d in enumerate(durations, start=2) if i - 1 not in ckpt_steps and i not in ckpt_steps]
    saving = [ends[s - 1] - ends[s - 2] for s in ckpt_steps]
    return statistics.median(plain), statistics.median(saving), statistics.median(at_ckpt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    import os
    import socket
    import subprocess
    import sys

    import boto3

    for key, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        os.environ.setdefault(key, value)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host, port = probe.getsockname()
    # its own process, as a store on another machine would be: its work does not hold this GIL
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
        for _ in range(100):  # bounded: 20 s for the server to listen
            try:
                client.create_bucket(Bucket="bench")
                break
            except Exception:
                time.sleep(0.2)
        store = f"s3://bench?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
        with tempfile.TemporaryDirectory() as local:
            rows = [
                ("local disk", timed_run(os.path.join(local, "run"), args, background=False)),
                ("s3, upload in the step", timed_run(storage.join(store, "sync"), args, background=False)),
                ("s3, background upload", timed_run(storage.join(store, "async"), args, background=True)),
            ]
            size = os.path.getsize(storage.glob(os.path.join(local, "run", "checkpoints"), "*.pt")[-1]) / 1e6
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"checkpoint {size:.1f} MB, every {args.every} steps, {args.steps} steps")
    print(f"{'run.dir':<26}{'step ms':>10}{'ckpt step ms':>14}{'stall ms':>10}{'next step ms':>14}")
    for name, (plain, saving, after) in rows:
        print(f"{name:<26}{plain * 1e3:>10.1f}{saving * 1e3:>14.1f}{(saving - plain) * 1e3:>10.1f}{after * 1e3:>14.1f}")


if __name__ == "__main__":
    main()
