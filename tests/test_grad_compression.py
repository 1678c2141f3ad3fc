"""run.grad_compression: PyTorch's DDP communication hooks on three real gloo processes (127.0.0.1).

One start of 3 processes runs every check (a process group costs seconds to start): the bytes and
the wait on communication each rank measures, each compression's first-step gradients against plain
DDP's, PowerSGD sending fewer bytes once it starts, its state surviving a save / weights_only load /
resume, and two of the processes continuing the three's checkpoint (an elastic resize).
"""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

import began_dist.families  # noqa: F401  (registers the families)
from began_dist.config import Config, ConfigError, load_config
from began_dist.distributed import comm
from began_dist.families.began import BeganFamily

WORLD, BATCH, NZ, SIZE = 3, 6, 8, 16
FEWER = 2  # the worker count that continues the checkpoint of WORLD workers (an elastic resize)
# fp16 keeps 11 significant bits, bf16 8: the all-reduced gradient's relative error (L2) stays below these
TOLERANCE = {"fp16": 2e-3, "bf16": 1.5e-2}
LATE_S = 0.5  # rank 1's delay before a step (the comm-wait check)
# Bounds: a peer that never shows up fails its group's collectives after GROUP_S; the three ranks after SPAWN_S.
GROUP_S, SPAWN_S = 120, 400


def tiny_family(device) -> BeganFamily:
    cfg = OmegaConf.structured(Config)
    m = cfg.model
    m.image_size, m.filters, m.nz, m.nh, m.convs_per_scale = SIZE, 8, NZ, NZ, 1
    cfg.train.batch_size = BATCH
    torch.manual_seed(0)
    return BeganFamily(cfg, device)


def distributed(compression, **options):
    family = tiny_family(torch.device("cpu"))
    sync = comm.GradientSync(torch.device("cpu"), compression, **options)
    family.distribute(lambda net: sync.wrap(net, "G" if net is family.G else "D"))
    return family, sync


def rank_batch(step: int, rank: int = -1):
    """This rank's (or `rank`'s) half of step `step`'s global batch: different per rank, so the all-reduce matters."""
    generator = torch.Generator().manual_seed(100 * step + (dist.get_rank() if rank < 0 else rank))
    real = torch.rand(BATCH // WORLD, 1, SIZE, SIZE, generator=generator) * 2 - 1
    z = torch.rand(2, BATCH // WORLD, NZ, generator=generator) * 2 - 1
    return real, z


def grads(family) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for net in (family.G, family.D) for p in net.parameters()])


def weights(family) -> list[torch.Tensor]:
    return [p.detach().clone() for net in (family.G, family.D) for p in net.parameters()]


def join_group(store: str, rank: int, world: int) -> None:
    """A gloo group rendezvousing in a file (no TCP port to pick ahead and lose to another process)
    and talking over loopback whatever the hostname resolves to."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=GROUP_S))  # fmt: skip


def _worker(rank: int, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    join_group(f"{out}.store", rank, WORLD)
    try:
        results = {}
        real, z = rank_batch(0)
        plain, plain_sync = distributed("none")
        plain.train_step(real, z)
        results["none_bytes"] = plain_sync.bytes_sent
        # the wait on communication: rank 1 starts its step late, so rank 0's all-reduces wait for it
        late, late_sync = distributed("none")
        if rank == 1:
            time.sleep(LATE_S)
        late.train_step(real, z)
        results["late"] = late_sync.interval_stats(1)
        results["late_again"] = late_sync.interval_stats(1)  # nothing since the last call
        for compression in ("fp16", "bf16"):
            family, sync = distributed(compression)
            family.train_step(real, z)
            results[compression] = ((grads(family) - grads(plain)).norm() / grads(plain).norm()).item()
            results[f"{compression}_bytes"] = sync.bytes_sent

        # PowerSGD from the second backward pass on: bytes per step before and after it starts
        family, sync = distributed("powersgd", powersgd_start_step=2)
        sent = []
        for step in range(4):
            before = sync.bytes_sent
            family.train_step(*rank_batch(step))
            sent.append(sync.bytes_sent - before)
        results["powersgd_bytes"] = sent
        # save as the loop does (every rank gathers, rank 0 writes), load weights_only, resume; one more step each
        state = {"family": family.state_dict(), "powersgd": sync.state_dict()}
        path = f"{out}.ckpt"
        if rank == 0:
            torch.save(state, path)
        dist.barrier()
        saved = torch.load(path, weights_only=True)
        resumed, resumed_sync = distributed("powersgd", powersgd_start_step=2)
        resumed.load_state_dict(saved["family"])
        notes = resumed_sync.load_state_dict(saved["powersgd"])
        afresh, _ = distributed("powersgd", powersgd_start_step=2)  # the same weights, PowerSGD's state dropped
        afresh.load_state_dict(torch.load(path, weights_only=True)["family"])
        for step in (4, 5):
            for run in (family, resumed, afresh):
                run.train_step(*rank_batch(step))
        for name, run in (("resumed", resumed), ("afresh", afresh)):
            results[name] = max((a - b).abs().max().item() for a, b in zip(weights(family), weights(run)))
        results["resume_notes"] = notes
        results["error_ranks"] = len(saved["powersgd"]["D"]["error"])
        results["iter"] = resumed_sync.states["D"].iter
        reference = weights(family)  # after steps 4 and 5 on WORLD workers
    finally:
        dist.destroy_process_group()
    if rank < FEWER:  # the same checkpoint continued by FEWER workers, each a slice of the same global batches
        results.update(_fewer_workers_continue(rank, f"{out}.fewer-store", path, reference))
    if rank == 0:
        torch.save(results, out)


def _fewer_workers_continue(rank: int, store: str, path: str, reference: list[torch.Tensor]) -> dict:
    """Another worker count (an elastic resize): the ranks' mean error feedback keeps the updates;
    zero error feedback (P, Q and the step count kept) moves them."""
    join_group(store, rank, FEWER)
    try:
        found = {}
        for name in ("mean", "zero"):
            saved = torch.load(path, weights_only=True)
            family, sync = distributed("powersgd", powersgd_start_step=2)
            family.load_state_dict(saved["family"])
            if name == "zero":
                for network in ("G", "D"):
                    saved["powersgd"][network]["error"] = [{} for _ in range(WORLD)]
            notes = sync.load_state_dict(saved["powersgd"])
            share = slice(rank * BATCH // FEWER, (rank + 1) * BATCH // FEWER)
            for step in (4, 5):
                parts = [rank_batch(step, r) for r in range(WORLD)]
                real, z = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts], dim=1)
                family.train_step(real[share], z[:, share])
            found[f"{name}_notes"] = notes
            found[name] = max((a - b).abs().max().item() for a, b in zip(weights(family), reference))
        return found
    finally:
        dist.destroy_process_group()


# Each rank is a plain child process (not multiprocessing's spawn) with an environment of its own:
# the session's Ray cluster sets variables in this process that the ranks have no use for.
RANK_CODE = """
import faulthandler, signal, sys
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's timeout asks each rank where it is
import test_grad_compression
test_grad_compression._worker(int(sys.argv[1]), sys.argv[2])
"""
KEPT_ENV = ("PATH", "HOME", "LANG", "TMPDIR")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("comm") / "results.pt")
    env = {key: os.environ[key] for key in KEPT_ENV if key in os.environ}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))])
    logs = [open(f"{out}.rank{rank}.log", "w+") for rank in range(WORLD)]
    ranks = [subprocess.Popen([sys.executable, "-c", RANK_CODE, str(rank), out], env=env, stdout=logs[rank],
                              stderr=subprocess.STDOUT) for rank in range(WORLD)]  # fmt: skip
    deadline = time.monotonic() + SPAWN_S
    try:
        while any(rank.poll() is None for rank in ranks) and time.monotonic() < deadline:
            if any(rank.poll() not in (None, 0) for rank in ranks):
                break  # one failed: the others would wait for it until GROUP_S
            time.sleep(0.5)
        hung = [rank for rank in ranks if rank.poll() is None]
        for rank in hung:
            os.kill(rank.pid, signal.SIGUSR1)  # faulthandler: each stack into its log
        time.sleep(2 if hung else 0)
    finally:  # no rank may outlive the test
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
            rank.wait(timeout=30)
    output = []
    for number, log in enumerate(logs):
        log.seek(0)
        output.append(f"--- rank {number} (exit {ranks[number].returncode}):\n{log.read()[-6000:]}")
        log.close()
    assert all(rank.returncode == 0 for rank in ranks), "\n".join(output)
    return torch.load(out, weights_only=False)


@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_cast_compression_matches_plain_ddp(results, compression):
    assert 0 < results[compression] < TOLERANCE[compression]  # > 0: the cast really happened
    assert results[f"{compression}_bytes"] > 0


def test_bytes_and_wait_are_measured(results):
    # the same buckets in fp32 (none) and fp16
    assert results["none_bytes"] == 2 * results["fp16_bytes"] > 0
    late = results["late"]
    assert late["comm_bytes"] == results["none_bytes"]
    # rank 0 waited about LATE_S for rank 1, rank 1 itself far less (2 ranks: min = 2 mean - max)
    longest, shortest = late["comm_wait_max_s"], 2 * late["comm_wait_s"] - late["comm_wait_max_s"]
    assert LATE_S * 0.8 < longest < LATE_S * 3
    assert longest - shortest > LATE_S * 0.4
    assert results["late_again"] == {"comm_bytes": 0, "comm_wait_s": 0, "comm_wait_max_s": 0}


def test_powersgd_really_compresses_and_its_state_survives_a_resume(results):
    sent = results["powersgd_bytes"]
    assert sent[0] == sent[1] > 0  # plain all-reduces of the whole buckets
    assert 0 < sent[2] < sent[1] / 2 and sent[3] == sent[2]  # rank-1 factors from the third pass on
    # Not bitwise: the resumed process's first pass runs DDP's initial single bucket (parameters in another
    # order) before DDP rebuilds them, which moves the last bits of the factorisation (docs/performance.md).
    # Dropping the state instead moves the weights by about one Adam step (lr 1e-4).
    assert results["resumed"] < 1e-7 and results["afresh"] > 1e-5
    assert results["resume_notes"] == []
    assert results["error_ranks"] == WORLD and results["iter"] == 6



def test_powersgd_state_resumed_by_another_worker_count_keeps_the_updates(results):
    """An elastic resize: two workers continue three workers' checkpoint, each step's global batch split in two.
    The ranks' mean error feedback gives the three-worker updates (float order aside); zeroing it does not."""
    assert any("their mean" in note for note in results["mean_notes"])
    assert results["mean"] < 1e-6, results["mean"]
    assert results["zero"] > 100 * max(results["mean"], 1e-9), (results["zero"], results["mean"])


@pytest.mark.parametrize("override,key", [
    ("run.grad_compression=int8", "run.grad_compression"),
    ("run.powersgd_rank=0", "run.powersgd_rank"),
    ("run.powersgd_start_step=1", "run.powersgd_start_step"),
    ("run.bucket_cap_mb=0", "run.bucket_cap_mb"),
])
def test_bad_compression_options_are_refused(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


@pytest.mark.ray
@pytest.mark.slow
def test_powersgd_under_ray_train_checkpoints_every_rank_and_resumes(ray_cluster, tmp_path):
    """The loop's side: 2 Ray Train workers compress, the checkpoint holds both ranks' error feedback, and
    `--resume` on 2 workers restores it (no other-count line in log.txt); stats.jsonl logs the bytes falling."""
    from helpers import TINY

    from began_dist.cli import main
    from began_dist.config import resolve_run_dir
    from began_dist.distributed.ray_train import run_on_ray
    from began_dist.train import state as ckpt

    run_dir = tmp_path / "run"
    cfg = load_config(None, [
        *TINY, "run.workers=2", "run.worker_resources.train_slot=1", "run.controller_failure_limit=1",
        "run.grad_compression=powersgd", "run.powersgd_start_step=2", "train.steps=4", f"run.dir={run_dir}",
    ])
    resolve_run_dir(cfg)
    assert run_on_ray(cfg).step == 4
    # stats.jsonl: what each rank all-reduced per step, plain for steps 1-2, rank-1 factors for 3-4
    lines = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert 0 < lines[1]["comm_bytes"] < lines[0]["comm_bytes"] / 2
    assert all(line["comm_wait_max_s"] >= line["comm_wait_s"] >= 0 for line in lines)
    saved = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(run_dir)))["powersgd"]  # weights_only=True
    assert saved["world_size"] == 2 and set(saved) == {"world_size", "G", "D"}
    for name in ("G", "D"):
        assert saved[name]["iter"] == 4  # one backward pass of each network per step, compressed from the third
        errors = saved[name]["error"]
        assert len(errors) == 2 and errors[0] and not all(torch.equal(errors[0][k], errors[1][k]) for k in errors[0])
    assert main(["train", "--resume", str(run_dir), "train.steps=6"]) == 0
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(str(run_dir)))["powersgd"]["D"]["iter"] == 6
    assert "error feedback was saved by" not in (run_dir / "log.txt").read_text()  # same count: restored as is
