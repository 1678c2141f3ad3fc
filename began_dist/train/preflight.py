"""One preflight for train, eval and tune: everything a run needs, checked once before any work.

Every refusal is a `ConfigError` or `DataError` naming the key or file (exit 2), raised
before a run directory, a Ray cluster or a training step is touched:

- the resume rules (`--resume`: a run directory with config.yaml and a checkpoint, the
  model unchanged, more steps than done) and the refusal of a new run in a directory
  that already has checkpoints;
- devices: fp16 needs a CUDA device (here, or on the workers asked for), bf16 a CUDA device or a CPU
  with native bf16 (avx512_bf16 or AMX);
- data: the source exists and is readable (`data.check_source`);
- metrics: the names are known and their feature nets are on disk, for training's
  `train.eval_metrics` as for `began-dist eval --metrics`.
"""

from __future__ import annotations

from typing import Optional

from omegaconf import DictConfig, OmegaConf

from began_dist import storage
from began_dist.config import ConfigError, load_config, resolve_run_dir
from began_dist.config.load import refuse_relative_in_ray_job
from began_dist.data import check_source
from began_dist.eval.metrics import check_metric_names, check_prerequisites
from began_dist.train import state as ckpt
from began_dist.uris import uri_scheme


def check_metrics(text: str, field: str) -> list[str]:
    """The metric names in `text` (known ones) whose feature nets are on disk; refusals name `field`."""
    names = check_metric_names(text, field)
    try:
        check_prerequisites(names)
    except FileNotFoundError as error:
        raise ConfigError(f"{field}={text}: {error}") from None
    return names


def check_devices(cfg: DictConfig) -> None:
    if cfg.train.precision == "fp32":
        return
    import torch  # deferred: the other commands start faster without it

    from began_dist.families.began import cpu_has_bf16

    gpu = torch.cuda.is_available() or (cfg.run.workers > 0 and cfg.run.gpus_per_worker > 0)
    if cfg.train.device == "cpu" or not gpu:
        if cfg.train.precision == "fp16":
            raise ConfigError("train.precision=fp16: mixed precision in fp16 needs a GPU; no CUDA device")
        if not cpu_has_bf16():
            raise ConfigError(
                "train.precision=bf16: no CUDA device, and this CPU has neither avx512_bf16 nor AMX "
                "(oneDNN would emulate bf16, slower than fp32)"
            )


def check_run(cfg: DictConfig) -> DictConfig:
    """Devices, data and (when training evaluates) metrics of a resolved training config."""
    check_devices(cfg)
    check_source(cfg)
    if cfg.train.eval_every:
        check_metrics(cfg.train.eval_metrics, "train.eval_metrics")
    return cfg


def train_config(config: Optional[str], overrides: list[str], resume: Optional[str] = None) -> DictConfig:
    """The checked config of `began-dist train` (a new run from `config`, or `--resume RUN_DIR`)."""
    if resume:
        uri_scheme(resume, "--resume", ConfigError)
        refuse_relative_in_ray_job(resume, "--resume")
        run_dir = storage.resolve(resume)
        saved = storage.join(run_dir, "config.yaml")
        if not storage.isfile(saved):
            raise ConfigError(f"--resume {resume}: no config.yaml there; is it a run directory?")
        if config:
            raise ConfigError("--config cannot be combined with --resume (the run's config.yaml is used)")
        cfg = load_config(saved, overrides)
        cfg.run.dir = run_dir
        check_resume(cfg, load_config(saved), run_dir)  # compared as resolved, the same way as cfg
    else:
        cfg = load_config(config, overrides)
        run_dir = resolve_run_dir(cfg)
        if ckpt.list_checkpoints(run_dir):
            raise ConfigError(f"run.dir={run_dir}: already has checkpoints; continue it with --resume {run_dir}")
    return check_run(cfg)


def check_resume(cfg: DictConfig, saved: DictConfig, run_dir: str) -> None:
    """What `--resume` may change: not the model (the checkpoint's shapes), and steps only upwards."""
    found = ckpt.list_checkpoints(run_dir)
    if not found:
        raise ConfigError(f"--resume {run_dir}: no checkpoint to resume from")
    if OmegaConf.to_container(saved.model) != OmegaConf.to_container(cfg.model):
        raise ConfigError("model.*: cannot change on resume (the checkpoint's networks have the saved shapes)")
    last_step = found[-1][0]
    if cfg.train.steps <= last_step:
        raise ConfigError(f"train.steps={cfg.train.steps}: the run is already at step {last_step}; give more steps")
