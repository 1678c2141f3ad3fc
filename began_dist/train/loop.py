"""The per-worker training loop: the one loop of every mode.

Local mode runs `Trainer` in this process (began_dist.launch); Ray
Train runs the same loop in each worker. Rank and world size come from the environment, the
global batch and its latents are sliced per rank (docs/design.md, the data-parallel rule),
and every logged value is an all-reduced mean, so rank 0 speaks for all.

    for each step:
        x   <- this rank's slice of global batch b           (GlobalBatchSampler)
        z   <- this rank's slice of the global latents       (LatentSource)
        family.train_step(x, z[, labels=y])                  (D step, G step, k_t; y: families that need labels)
        lr control, then log / images / checkpoint on their cadences
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Optional

import torch
from omegaconf import OmegaConf

from began_dist import storage
from began_dist.config import from_container, to_container
from began_dist.data import build_dataset
from began_dist.data.dataset import to_model_range
from began_dist.data.sampler import GlobalBatchSampler, LatentSource, fixed_latents
from began_dist.distributed import comm
from began_dist.eval.metrics import parse_metrics
from began_dist.eval.metrics.evaluate import evaluate_family, summary, truncate_metrics
from began_dist.families import get_family
from began_dist.families.equilibrium import LrControl
from began_dist.train import state as ckpt
from began_dist.train.logging import RunLogger
from began_dist.train.reporting import Reporter
from began_dist.train.result import RunResult, Status

FIXED_SAMPLES = 64  # images in the G(z_fixed) grids


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or inf (exit code 3); the last good checkpoint is kept."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; a checkpoint was saved (exit code 130)."""


class NonFiniteGuard:
    """Remembers, on the device, the first step whose losses were not finite.

    The host looks only when it logs or saves, so there is no sync per step, and
    no checkpoint is ever written from a state that went through a bad step.
    """

    def __init__(self, keys: tuple[str, ...], device: torch.device):
        self.keys = keys
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.values = torch.zeros(len(keys), device=device)

    def observe(self, step: int, values: torch.Tensor) -> None:
        """`values`: this step's losses in the order of `keys`, one device vector."""
        new = ~torch.isfinite(values).all() & (self.first_step < 0)
        self.first_step = torch.where(new, step, self.first_step)
        self.values = torch.where(new, values, self.values)

    def check(self) -> None:
        step = int(self.first_step)
        if step >= 0:
            losses = ", ".join(f"{k}={v:g}" for k, v in zip(self.keys, self.values.tolist()))
            raise NonFiniteLoss(f"non-finite loss at step {step}: {losses}")


@contextlib.contextmanager
def stop_requests():
    """A flag set by SIGINT/SIGTERM (main thread only), so the loop can save and stop."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: requested.set())
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Trainer:
    """The state of one worker's run and the steps that move it forward."""

    def __init__(self, config: dict, reporter: Optional[Reporter] = None, device: Optional[torch.device] = None):
        self.cfg = cfg = from_container(config)
        self.run_dir = cfg.run.dir
        self.reporter = reporter or Reporter()
        self.rank, self.world = comm.rank(), comm.world_size()
        self.device = device or comm.pick_device(cfg.train.device)
        seed, batch = cfg.train.seed, cfg.train.batch_size
        torch.manual_seed(seed)  # same initial weights on every rank
        self.family = get_family(cfg.model.family)(cfg, self.device)
        self.family.distribute(lambda network: comm.wrap_ddp(network, self.device))
        self.dataset = build_dataset(cfg)
        self.sampler = GlobalBatchSampler(len(self.dataset), batch, seed, self.rank, self.world)
        self.latents = LatentSource(seed, self.family.latent_size, batch, self.rank, self.world)
        self.lr_control = LrControl(cfg.train)
        self.fixed_z = fixed_latents(seed, FIXED_SAMPLES, self.family.latent_size)
        self.step, self.elapsed_s = 0, 0.0
        self.logged = self.family.logged_losses
        self.guard = NonFiniteGuard(self.logged, self.device)
        self.last_stats: dict = {}
        self.last_checkpoint: Optional[str] = None
        self.eval_cache: dict = {}  # real-side metric work, shared by the evaluations of this run
        self.eval_latest: dict = {}  # headline value of each metric's latest evaluation, reported beside M

    # -- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = self.family.state_dict()
        state.update(
            step=self.step,
            lr_state=self.lr_control.state_dict(),
            rng={**ckpt.capture_rng(self.device), "latent": self.latents.state_dict()},
            data=self.sampler.state_dict(),
            fixed_z=self.fixed_z,
            config=to_container(self.cfg),
            elapsed_s=self.elapsed_s,
        )
        return state

    def load_state_dict(self, state: dict) -> None:
        self.family.load_state_dict(state)
        self.step, self.elapsed_s = int(state["step"]), float(state.get("elapsed_s", 0.0))
        self.lr_control.load_state_dict(state["lr_state"], self.device)
        ckpt.restore_rng(state["rng"], self.device)
        self.latents.load_state_dict(state["rng"]["latent"])
        self.sampler.load_state_dict(state["data"])
        self.fixed_z = state["fixed_z"]

    def save(self, metrics: Optional[dict] = None) -> None:
        self.guard.check()  # never save a state that went through a non-finite step
        path = None
        if self.rank == 0:
            keep = self.cfg.run.checkpoints_to_keep
            path = self.last_checkpoint = ckpt.save_checkpoint(self.state_dict(), self.run_dir, self.step, keep)
        self.reporter.report({**(metrics or {"step": self.step}), **self.eval_latest}, path)

    def restore_latest(self) -> Optional[str]:
        state, source = self.reporter.load_latest(self.run_dir)
        if state is not None:
            self.load_state_dict(state)
            self.last_checkpoint = source
        return source

    # -- the loop -----------------------------------------------------------------------
    def run(self, progress: bool = True) -> RunResult:
        """Train to train.steps; raises NonFiniteLoss or Interrupted (`run_trainer` turns them into results).

        The feature nets of train.eval_metrics were checked by the preflight (train/preflight.py).
        """
        cfg, t = self.cfg, self.cfg.train
        resumed_from = self.restore_latest()
        self.lr_control.apply(*self.family.optimizers)
        tags, shown = self.family.scalar_tags, self.family.progress_keys
        log = RunLogger(self.run_dir, self.rank == 0, self.step, t.steps, progress, tags, shown)
        if self.rank == 0:
            storage.write_text(storage.join(self.run_dir, "config.yaml"), OmegaConf.to_yaml(cfg, resolve=True))
            truncate_metrics(self.run_dir, self.step)  # as stats.jsonl: no step recorded twice
        log.info(self._banner(resumed_from))
        snapshot = torch.arange(min(FIXED_SAMPLES, len(self.dataset)))
        snapshot_real = to_model_range(self.dataset.batch(snapshot), self.device)
        totals = torch.zeros(len(self.logged), device=self.device)
        interval_steps, interval_start, record = 0, time.perf_counter(), None
        try:
            with stop_requests() as stop:
                while self.step < t.steps:
                    totals += self._one_step()
                    interval_steps += 1
                    log.advance()
                    done = self.step
                    if done % t.log_every == 0 or done == t.steps:
                        now = time.perf_counter()
                        record = self._record(totals / interval_steps, interval_steps, now - interval_start)
                        log.scalars(record)
                        if done % t.checkpoint_every and done != t.steps:
                            # checkpoint steps report with their checkpoint
                            self.reporter.report({**record, **self.eval_latest})
                        totals.zero_()
                        interval_steps, interval_start = 0, now
                    if self.rank == 0 and (done % t.sample_every == 0 or done == t.steps):
                        panels = self.family.image_panels(snapshot_real, self.fixed_z, **self._labels(snapshot))
                        log.images(done, panels)
                    if self.rank == 0 and t.eval_every and (done % t.eval_every == 0 or done == t.steps):
                        self._evaluate(log)
                    if done % t.checkpoint_every == 0 or done == t.steps:
                        self.save(record if record and record["step"] == done else None)
                        log.info(f"step {done}: checkpoint {self.last_checkpoint}")
                    if stop.is_set():
                        self.save()
                        log.info(f"interrupted at step {done}: checkpoint {self.last_checkpoint}")
                        raise Interrupted(f"interrupted at step {done}; resume with --resume {self.run_dir}")
        except NonFiniteLoss as error:
            log.info(f"stopped: {error}; last good checkpoint: {self.last_checkpoint}")
            raise
        finally:
            log.close()
        digests = self._replica_digests()
        log.info(f"done: {self.step} steps in {self.run_dir}")
        return self.result(Status.done, metrics=record or {}, replica_digests=digests)

    def result(self, status: Status, message: str = "", metrics: Optional[dict] = None, **debug) -> RunResult:
        """Where this worker stands, as a RunResult; `debug` holds test diagnostics (replica_digests, ...)."""
        return RunResult(status, self.step, metrics or {}, self.last_checkpoint, self.run_dir, message, debug)

    def _replica_digests(self) -> list[str]:
        """Each rank's digest of its networks (and k_t); replicas that drifted apart would differ."""
        state = self.family.state_dict()
        tensors = [t for name in self.family.replicated_networks for t in state[name].values()]
        digests = comm.replica_digests(tensors + ([self.family.k_t] if "k_t" in state else []))
        if len(set(digests)) > 1:
            raise RuntimeError(f"replicas differ at step {self.step}: {digests}")
        return digests

    def _evaluate(self, log: RunLogger) -> None:
        """train.eval_every (rank 0): metrics of the current weights into metric-<name>.jsonl and TensorBoard."""
        t = self.cfg.train
        names = parse_metrics(t.eval_metrics)
        results = evaluate_family(
            self.cfg, self.family, self.dataset, self.step, self.run_dir, names, t.eval_n, self.eval_cache, log.tb
        )
        self.eval_latest = {result["metric"]: result[result["metric"]] for result in results}
        log.info(f"step {self.step}: {summary(results)}")

    def _one_step(self) -> torch.Tensor:
        """One training step; returns its logged losses as one device vector (no host sync)."""
        started = time.perf_counter()
        self.family.set_step(self.step)
        indices = self.sampler.next_indices()
        real = to_model_range(self.dataset.batch(indices), self.device)
        z = self.latents.next(self.family.latents_per_step, self.device)
        stats = self.last_stats = self.family.train_step(real, z, **self._labels(indices))
        self.step += 1
        losses = torch.stack([stats[k].float() for k in self.logged])  # built once: guard and log totals
        self.guard.observe(self.step, losses)
        if self.lr_control.observe(self.step, stats[self.family.lr_monitor]):
            self.lr_control.apply(*self.family.optimizers)
        self.elapsed_s += time.perf_counter() - started
        return losses

    def _labels(self, indices: torch.Tensor) -> dict:
        """{"labels": the images' labels} for a family that needs them (the same indices: sliced per rank as
        the images are), else nothing."""
        if not self.family.needs_labels:
            return {}
        return {"labels": self.dataset.labels[indices].to(self.device)}

    def _record(self, means: torch.Tensor, steps: int, seconds: float) -> dict:
        self.guard.check()
        record = dict(zip(self.logged, means.tolist()))  # one host sync per log interval
        record.update((key, float(value)) for key, value in self.last_stats.items() if key not in record)  # k_t
        lr = self.lr_control.lr
        record.update(
            step=self.step,
            lr_G=lr,
            lr_D=lr,
            images_per_s=steps * self.cfg.train.batch_size / max(seconds, 1e-9),
            time_s=round(self.elapsed_s, 3),
        )
        return record

    def _banner(self, resumed_from: Optional[str]) -> str:
        t = self.cfg.train
        where = f"resumed from {resumed_from} at step {self.step}" if resumed_from else "new run"
        return (
            f"{where}: {self.family.describe()} on {self.device} x {self.world}; "
            f"{len(self.dataset)} images ({self.cfg.data.source}); batch {t.batch_size}, steps {t.steps}; "
            f"run dir {self.run_dir}"
        )


def run_trainer(trainer: Trainer, progress: bool = True) -> RunResult:
    """`trainer.run`, with the ways a run stops early turned into a RunResult's status."""
    try:
        return trainer.run(progress)
    except NonFiniteLoss as error:
        return trainer.result(Status.non_finite, str(error))
    except Interrupted as error:
        return trainer.result(Status.interrupted, str(error))


def train_loop(config: dict, reporter: Optional[Reporter] = None, progress: bool = True) -> RunResult:
    """Run (or continue) the training of `config` in this worker (local mode: began_dist.launch)."""
    return run_trainer(Trainer(config, reporter), progress)
