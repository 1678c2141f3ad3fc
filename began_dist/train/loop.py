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

import time
from typing import Optional

import torch
from omegaconf import OmegaConf

from began_dist import storage
from began_dist.config import from_container, to_container
from began_dist.data import build_dataset
from began_dist.data.dataset import to_model_range
from began_dist.data.prefetch import Prefetcher
from began_dist.data.sampler import GlobalBatchSampler, LatentSource, batch_digest, fixed_latents
from began_dist.distributed import comm
from began_dist.eval.metrics import parse_metrics
from began_dist.eval.metrics.evaluate import evaluate_family, summary, truncate_metrics
from began_dist.families import get_family
from began_dist.families.equilibrium import LrControl
from began_dist.train import state as ckpt
from began_dist.train.guards import (
    Interrupted,
    NonFiniteGuard,
    NonFiniteLoss,
    StorageFailed,
    set_deterministic,
    stop_requests,
)
from began_dist.train.logging import RunLogger
from began_dist.train.reporting import Reporter
from began_dist.train.result import RunResult, Status
from began_dist.train.resume import choose_checkpoint, decide_memory_format
from began_dist.train.stops import StopPoints, listening
from began_dist.train.writes import RunDirWrites

FIXED_SAMPLES = 64  # images in the G(z_fixed) grids


class Trainer(RunDirWrites):
    """The state of one worker's run and the steps that move it forward."""

    def __init__(self, config: dict, reporter: Optional[Reporter] = None, device: Optional[torch.device] = None):
        self.cfg = cfg = from_container(config)
        self.run_dir = cfg.run.dir
        self.reporter = reporter or Reporter()
        self.rank, self.world = comm.rank(), comm.world_size()
        self.device = device or comm.pick_device(cfg.train.device)
        seed, batch = cfg.train.seed, cfg.train.batch_size
        if cfg.train.deterministic:
            set_deterministic()
        torch.manual_seed(seed)  # same initial weights on every rank
        # Read before the networks are built: an `auto` run's checkpoint holds the layout it decided.
        self.resume_state, self.resume_source, self.resume_error = choose_checkpoint(self.reporter, self.run_dir)
        cfg.train.memory_format = decide_memory_format(cfg, self.resume_state, self.device)
        self.family = get_family(cfg.model.family)(cfg, self.device)
        r = cfg.run
        self.sync = comm.GradientSync(self.device, r.grad_compression, r.bucket_cap_mb, r.powersgd_rank,
                                      r.powersgd_start_step, r.powersgd_min_compression_rate)
        self.family.distribute(lambda network: self.sync.wrap(network, self._network_name(network)))
        self.comm_state: dict = {}  # PowerSGD's state for the next checkpoint (gathered by every rank)
        self.comm_notes: list[str] = []  # what resuming the comm hooks' state had to say (log.txt)
        self.notes: list[str] = []  # the launcher's lines for log.txt after the banner (e.g. an elastic resize)
        self.dataset = build_dataset(cfg)
        self.sampler = GlobalBatchSampler(len(self.dataset), batch, seed, self.rank, self.world)
        self.latents = LatentSource(seed, self.family.latent_size, batch, self.rank, self.world)
        # The next batches are read in a background thread while a step runs (docs/data.md, "Prefetch").
        self.prefetch = Prefetcher(self.dataset, self.sampler, self.device, cfg.data.prefetch, self.family.needs_labels)
        self.last_digest = ""  # batch_digest of the last logged step (stats.jsonl)
        self.lr_control = LrControl(cfg.train)
        self.fixed_z = fixed_latents(seed, FIXED_SAMPLES, self.family.latent_size)
        self.step, self.elapsed_s = 0, 0.0
        self.logged = self.family.logged_losses
        self.guard = NonFiniteGuard(self.logged, self.device)
        self.last_stats: dict = {}
        self.last_checkpoint: Optional[str] = None
        self.saved_step = -1  # the step of the last checkpoint this run wrote
        # Stop points: signals and drain notices, agreed by every rank (train/stops.py); every step in local mode.
        self.stops = StopPoints(self.reporter, cfg.run.stop_check_every if cfg.run.workers > 0 else 1, self.device)
        self.storage_failure: Optional[str] = None  # rank 0's first failed write, until the next storage check
        # An object-store run directory receives checkpoints in the background (rank 0 only writes).
        self.uploads = None if storage.is_local(self.run_dir) else storage.BackgroundWriter()
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
        if self.comm_state:
            state["powersgd"] = self.comm_state
        return state

    def load_state_dict(self, state: dict) -> None:
        # The optimisers' hyperparameters (betas, eps, weight decay, ...) are this run's config, as the
        # optimisers were built from it; a checkpoint's saved param_groups (an earlier config, or a PBT
        # donor's) would otherwise win. The lr is LrControl's (train.lr x the saved multiplier).
        configured = [[{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
                      for optimizer in self.family.optimizers]
        self.family.load_state_dict(state)
        for optimizer, groups in zip(self.family.optimizers, configured):
            for group, settings in zip(optimizer.param_groups, groups):
                group.update(settings)
        self.step, self.elapsed_s = int(state["step"]), float(state.get("elapsed_s", 0.0))
        self.lr_control.load_state_dict(state["lr_state"], self.device)
        ckpt.restore_rng(state["rng"], self.device)
        self.latents.load_state_dict(state["rng"]["latent"])
        self.sampler.load_state_dict(state["data"])
        self.fixed_z = state["fixed_z"]
        self.comm_notes = self.sync.load_state_dict(state.get("powersgd", {}))

    def save(self, metrics: Optional[dict] = None) -> None:
        self.guard.check()  # never save a state that went through a non-finite step
        path = None
        self.comm_state = self.sync.state_dict()  # collective: each rank's PowerSGD error feedback
        if self.rank == 0:
            keep = self.cfg.run.checkpoints_to_keep
            with self._writes():
                path = self.last_checkpoint = ckpt.save_checkpoint(
                    self.state_dict(), self.run_dir, self.step, keep, self.uploads
                )
        if self.reporter.hands_over_checkpoints:
            self._finish_uploads()  # Tune gets the file (on a store, a reference to it): it must be there
        self._check_storage()  # before Ray or Tune is handed a checkpoint that was not written
        self.reporter.report({**(metrics or {"step": self.step}), **self.eval_latest}, path)
        self.saved_step = self.step

    def restore_latest(self) -> Optional[str]:
        if self.resume_error:
            raise ckpt.NoGoodCheckpoint(self.resume_error)
        state, source = self.resume_state, self.resume_source  # chosen in __init__
        self.resume_state = None
        if state is not None:
            self.load_state_dict(state)
            self.last_checkpoint = source
        return source

    # -- the loop -----------------------------------------------------------------------
    def run(self, progress: bool = True) -> RunResult:
        """Train to train.steps; raises NonFiniteLoss or Interrupted (`run_trainer` turns them into results).

        The feature nets of train.eval_metrics were checked by the preflight (train/preflight.py).
        """
        t = self.cfg.train
        resumed_from = self.restore_latest()
        self.lr_control.apply(*self.family.optimizers)
        log = self._open_log(progress)
        log.info(self._banner(resumed_from))
        for note in filter(None, (*self.reporter.notes, *self.notes, *self.comm_notes)):
            log.info(note)
        with self._writes():  # in log.txt now: a worker group stopped before its first checkpoint still shows
            log.flush()
        snapshot = torch.arange(min(FIXED_SAMPLES, len(self.dataset)))
        snapshot_real = to_model_range(self.dataset.batch(snapshot), self.device)
        self._totals = torch.zeros(len(self.logged), device=self.device)
        self._interval_steps, self._interval_start, self._last_record = 0, time.perf_counter(), None
        try:
            with stop_requests() as stop, listening():
                while self.step < t.steps:
                    self._totals += self._one_step()
                    self._interval_steps += 1
                    log.advance()
                    self._after_step(log, stop, snapshot, snapshot_real)
        except NonFiniteLoss as error:
            log.info(f"stopped: {error}; last good checkpoint: {self.last_checkpoint}")
            raise
        finally:
            self._close(log)
        digests = self._replica_digests()
        log.info(f"done: {self.step} steps in {self.run_dir}")
        self._check_storage(log)  # log.txt's last lines
        return self.result(Status.done, metrics=self._last_record or {}, replica_digests=digests)

    def _open_log(self, progress: bool) -> RunLogger:
        """The run's logger; rank 0 first clears stale temporary files and writes config.yaml (every rank
        then stops together if that failed)."""
        cfg, t = self.cfg, self.cfg.train
        tags, shown = self.family.scalar_tags, self.family.progress_keys
        log = None
        if self.rank == 0:
            with self._writes():
                removed = [path for sub in ("", ckpt.CHECKPOINT_DIR, "samples")
                           for path in storage.remove_stale_temps(storage.join(self.run_dir, sub))]
                log = RunLogger(self.run_dir, True, self.step, t.steps, progress, tags, shown)
                storage.write_text(storage.join(self.run_dir, "config.yaml"), OmegaConf.to_yaml(cfg, resolve=True))
                truncate_metrics(self.run_dir, self.step)  # as stats.jsonl: no step recorded twice
                if removed:
                    log.info(f"removed temporary files a stopped writer left: {', '.join(removed)}")
        if log is None:
            log = RunLogger(self.run_dir, False, self.step, t.steps, progress, tags, shown)
        try:
            self._check_storage(log)
        except StorageFailed:
            log.close()
            raise
        return log

    def _after_step(self, log: RunLogger, stop, snapshot: torch.Tensor, snapshot_real: torch.Tensor) -> None:
        """What the step just taken is due for, in this order: log, images, eval, checkpoint, stop request."""
        t, done = self.cfg.train, self.step
        if done % t.log_every == 0 or done == t.steps:
            self._log_interval(log)
        if self.rank == 0 and (done % t.sample_every == 0 or done == t.steps):
            panels = self.family.image_panels(snapshot_real, self.fixed_z, **self._labels(snapshot))
            with self._writes():
                log.images(done, panels)
        if self.rank == 0 and t.eval_every and (done % t.eval_every == 0 or done == t.steps):
            with self._writes():
                self._evaluate(log)
        if done % t.checkpoint_every == 0 or done == t.steps:
            # The logs are durable before the checkpoint exists: a resume cuts them back to it, never short of it.
            with self._writes():  # an object store receives stats.jsonl, log.txt and tb/ here
                log.flush()
            self.save(record if (record := self._last_record) and record["step"] == done else None)
            log.info(f"step {done}: checkpoint {self.last_checkpoint}")
        self.stops.after_step(self, log, stop)

    def _log_interval(self, log: RunLogger) -> None:
        """The means of the interval just ended into the logs (and the reporter, off checkpoint steps)."""
        t, done, now = self.cfg.train, self.step, time.perf_counter()
        record = self._record(self._totals / self._interval_steps, self._interval_steps, now - self._interval_start)
        self._last_record = record
        with self._writes():
            log.scalars(record)
        self._check_storage(log)
        if done % t.checkpoint_every and done != t.steps:
            # checkpoint steps report with their checkpoint
            self.reporter.report({**record, **self.eval_latest})
        self._totals.zero_()
        self._interval_steps, self._interval_start = 0, now

    def _close(self, log: RunLogger) -> None:
        """Stop the prefetcher, wait for the last upload, close the logs (also when the run failed)."""
        self.prefetch.close()
        try:
            self._finish_uploads()
        finally:
            with self._writes():
                log.close()

    def result(self, status: Status, message: str = "", metrics: Optional[dict] = None, **debug) -> RunResult:
        """Where this worker stands, as a RunResult; `debug` holds test diagnostics (replica_digests, ...)."""
        return RunResult(status, self.step, metrics or {}, self.last_checkpoint, self.run_dir, message, debug)

    def _network_name(self, network) -> str:
        """The checkpoint entry of `network` (its state under `powersgd`)."""
        names = [name for name in self.family.replicated_networks if getattr(self.family, name, None) is network]
        return names[0] if names else str(len(self.sync.states))

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
        position = self.sampler.position
        batch = self.prefetch.next()
        z = self.latents.next(self.family.latents_per_step, self.device)
        labels = {"labels": batch.labels} if self.family.needs_labels else {}
        stats = self.last_stats = self.family.train_step(batch.real, z, **labels)
        self.step += 1
        if self.step % self.cfg.train.log_every == 0 or self.step == self.cfg.train.steps:
            self.last_digest = batch_digest(self.sampler.global_batch_at(position), self.latents.last)
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
        return {"labels": self.dataset.label_rows(indices).to(self.device)}

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
            data_wait_s=comm.all_reduce_mean(torch.tensor(self.prefetch.take_wait_s() / steps)).item(),
            time_s=round(self.elapsed_s, 3),
            world_size=self.world,
            batch_digest=self.last_digest,
        )
        record.update(self.sync.interval_stats(steps))  # comm_bytes, comm_wait_s, comm_wait_max_s
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
    except StorageFailed as error:  # returned, not raised: Ray would retry the write into the same full disk
        return trainer.result(Status.storage_error, f"{error}; the run stopped, last good checkpoint: "
                              f"{trainer.last_checkpoint}")
    except ckpt.NoGoodCheckpoint as error:  # likewise: a retry finds the same bad files
        return trainer.result(Status.refused, str(error))


def train_loop(config: dict, reporter: Optional[Reporter] = None, progress: bool = True) -> RunResult:
    """Run (or continue) the training of `config` in this worker (local mode: began_dist.launch)."""
    return run_trainer(Trainer(config, reporter), progress)
