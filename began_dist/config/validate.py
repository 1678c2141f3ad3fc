"""The rules every run obeys, and the seam through which each family adds its own.

`validate` refuses anything impossible before any work starts, with a one-line message
naming the field. Family-specific rules live with the family (began_dist/families): each
family registers a `FamilyRules` under its `model.family` name when its module is imported,
so this package never imports a family (docs/design.md, "Config and the family seam").
"""

from __future__ import annotations

import math
from typing import Optional, Protocol

from omegaconf import DictConfig, OmegaConf

from began_dist.config.schema import CHOICES, IMAGE_SIZES, Config, ConfigError
from began_dist.uris import uri_scheme


class FamilyRules(Protocol):
    """What the config layer needs to know about one family (a family class satisfies it)."""

    config_defaults: dict  # applied over the dataclasses' defaults, under the user's file and overrides
    config_sections: tuple[str, ...]  # sections only this family reads; refused for others unless at default
    meaningless_keys: tuple[str, ...]  # keys this family ignores; refused unless at default

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """The family's own refusals (ConfigError naming the field)."""


FAMILY_RULES: dict[str, FamilyRules] = {}  # model.family -> its rules, filled by began_dist.families


def register_family_rules(name: str, rules: FamilyRules) -> None:
    FAMILY_RULES[name] = rules


def family_rules(name: str) -> Optional[FamilyRules]:
    """The rules of family `name`, or None when no family has that name (validate refuses it)."""
    if not FAMILY_RULES:  # a programming error, not a user's: say how to fix it
        raise RuntimeError("no model family is registered: import began_dist.families before loading a config")
    return FAMILY_RULES.get(name)


def validate(cfg: DictConfig) -> None:
    """Refuse impossible values, naming the field and what it allows."""
    family = family_rules(cfg.model.family)
    if family is None:
        raise ConfigError(f"model.family={cfg.model.family!r}: must be one of {', '.join(FAMILY_RULES)}")
    one_of(cfg, CHOICES)
    m, d, t, r = cfg.model, cfg.data, cfg.train, cfg.run
    _check_family_keys(cfg)
    family.validate_config(cfg)
    if m.image_size not in IMAGE_SIZES:
        raise ConfigError(f"model.image_size={m.image_size}: must be a power of two in 16..256 ({IMAGE_SIZES})")
    positive(cfg, "model.filters", "model.nz", "model.nh", "model.convs_per_scale", "model.residual_steps")
    positive(cfg, "train.steps", "train.batch_size", "train.lr", "train.checkpoint_every", "train.log_every")
    positive(cfg, "train.sample_every", "train.m_stall_window", "run.checkpoints_to_keep", "run.stop_check_every")
    if not 0.0 < t.gamma <= 1.0:
        raise ConfigError(f"train.gamma={t.gamma}: must be in (0, 1]")
    if not 0.0 <= t.lambda_k <= 1.0:
        raise ConfigError(f"train.lambda_k={t.lambda_k}: must be in [0, 1]")
    for key in ("train.beta1", "train.beta2"):
        if not 0.0 <= OmegaConf.select(cfg, key) < 1.0:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)}: must be in [0, 1)")
    if not (math.isfinite(t.g_ema_half_life) and t.g_ema_half_life >= 0.0):
        raise ConfigError(f"train.g_ema_half_life={t.g_ema_half_life}: must be a finite number of steps >= 0 (0: off)")
    if not 0.0 <= t.lr_min <= t.lr:
        raise ConfigError(f"train.lr_min={t.lr_min}: must be in [0, train.lr={t.lr}]")
    if t.lr_decay_factor is not None and not 0.0 < t.lr_decay_factor <= 1.0:
        raise ConfigError(f"train.lr_decay_factor={t.lr_decay_factor}: must be in (0, 1]")
    if t.lr_decay_every is not None and t.lr_decay_every <= 0:
        raise ConfigError(f"train.lr_decay_every={t.lr_decay_every}: must be a positive number of steps")
    if not 0.0 <= t.m_stall_eps < 1.0:
        raise ConfigError(f"train.m_stall_eps={t.m_stall_eps}: must be in [0, 1)")
    if t.eval_every < 0:
        raise ConfigError(f"train.eval_every={t.eval_every}: must be >= 0 (0 = never)")
    # The metric names are checked where the metric registry lives (eval.metrics.check_metric_names,
    # called by the training preflight): config sits below eval and does not import it.
    if t.eval_every and t.eval_n < 2:
        raise ConfigError(f"train.eval_n={t.eval_n}: must be at least 2")
    _check_run(r, t.batch_size)
    _check_data(d)
    if t.precision == "fp16" and t.device == "cpu":
        raise ConfigError("train.precision=fp16: needs train.device=cuda or auto (a CPU can use bf16)")


def _check_run(r: DictConfig, batch_size: int) -> None:
    """run.*: where and on how many workers a run trains."""
    uri_scheme(r.dir, "run.dir", ConfigError)  # before pyarrow sees it (began_dist/uris.py says why)
    if r.workers < 0:
        raise ConfigError(f"run.workers={r.workers}: must be >= 0 (0 = local mode)")
    if r.min_workers is not None:
        _check_worker_range(r, batch_size)
    elif r.workers > 0 and batch_size % r.workers:
        raise ConfigError(
            f"train.batch_size={batch_size}: must be divisible by run.workers={r.workers} (global batch split evenly)"
        )
    if not (r.resize_interval_s >= 0 and math.isfinite(r.resize_interval_s)):
        raise ConfigError(f"run.resize_interval_s={r.resize_interval_s}: must be a number of seconds >= 0")
    if r.cpus_per_worker <= 0 or r.gpus_per_worker < 0:
        raise ConfigError("run.cpus_per_worker must be > 0 and run.gpus_per_worker >= 0")
    if r.workers > 0 and r.gpus_per_worker > 0 and r.gpus_per_worker != int(r.gpus_per_worker):
        raise ConfigError(
            f"run.gpus_per_worker={r.gpus_per_worker:g}: Ray Train workers on GPUs talk over NCCL, which needs a "
            "whole GPU per rank (two ranks on one GPU fail in NCCL's setup); give a whole number, or 0 for CPU workers"
        )
    if r.max_failures < 0 or r.controller_failure_limit < 0:
        raise ConfigError("run.max_failures and run.controller_failure_limit must be >= 0")
    if r.collective_timeout_s <= 0:
        raise ConfigError(f"run.collective_timeout_s={r.collective_timeout_s}: must be a positive number of seconds")
    if r.powersgd_rank < 1:
        raise ConfigError(f"run.powersgd_rank={r.powersgd_rank}: must be >= 1")
    if r.powersgd_start_step < 2:
        # PowerSGD's error feedback and warm start need DDP's buckets, which are rebuilt after the first pass
        raise ConfigError(f"run.powersgd_start_step={r.powersgd_start_step}: must be >= 2")
    if not r.powersgd_min_compression_rate >= 0:
        raise ConfigError(f"run.powersgd_min_compression_rate={r.powersgd_min_compression_rate}: must be >= 0")
    if r.bucket_cap_mb <= 0:
        raise ConfigError(f"run.bucket_cap_mb={r.bucket_cap_mb}: must be positive")


def worker_range(run: DictConfig) -> tuple[int, int]:
    """(fewest, most) Ray Train workers of a run: run.min_workers..run.workers; min_workers unset: a fixed size."""
    return (run.workers if run.min_workers is None else run.min_workers), run.workers


def _check_worker_range(r: DictConfig, batch_size: int) -> None:
    """run.min_workers..run.workers: an elastic run may train with any count in the range, and each one
    must split the global batch evenly (docs/design.md, the data-parallel rule), so every step sees the
    same images and latents whatever the count."""
    if r.min_workers < 1:
        raise ConfigError(f"run.min_workers={r.min_workers}: must be >= 1 (an elastic run needs a worker)")
    if r.min_workers > r.workers:
        raise ConfigError(f"run.min_workers={r.min_workers}: must be <= run.workers={r.workers} (the range's top)")
    counts = range(r.min_workers, r.workers + 1)
    uneven = [n for n in counts if batch_size % n]
    if uneven:
        even = [n for n in counts if batch_size % n == 0]
        fits = f"it splits over {', '.join(map(str, even))} workers only" if even else "it splits over none of them"
        lcm = math.lcm(*counts)
        raise ConfigError(
            f"train.batch_size={batch_size}: must split evenly over every worker count from run.min_workers="
            f"{r.min_workers} to run.workers={r.workers}, not over {', '.join(map(str, uneven))}; {fits}. "
            f"Narrow the range, or use a multiple of {lcm} (e.g. {lcm * max(1, round(batch_size / lcm))})"
        )


def _check_data(d: DictConfig) -> None:
    """data.*: where the images come from and how they are read."""
    if d.source in ("folder", "shards") and not d.path:
        raise ConfigError(f"data.path: required with data.source={d.source}")
    if d.limit < 0 or d.glyphs <= 0:
        raise ConfigError("data.limit must be >= 0 and data.glyphs > 0")
    if d.prefetch < 0 or d.fetch_ahead < 0 or d.cache_gb <= 0:
        raise ConfigError("data.prefetch and data.fetch_ahead must be >= 0 and data.cache_gb > 0")
    if not 1 <= d.fetch_workers <= 64:
        raise ConfigError(f"data.fetch_workers={d.fetch_workers}: must be 1 (one shard at a time) to 64; "
                          "each fetch holds up to 16 MB in memory")


def _check_family_keys(cfg: DictConfig) -> None:
    """Refuse another family's keys, and keys this family ignores, when they are not at their defaults."""
    family, defaults = cfg.model.family, OmegaConf.structured(Config)
    foreign = [key for name, rules in FAMILY_RULES.items() if name != family for key in rules.config_sections]
    own = list(FAMILY_RULES[family].meaningless_keys)
    ignored = [leaf for name in foreign + own for leaf in _leaves(defaults, name)]
    for key in ignored:
        if OmegaConf.select(cfg, key) != OmegaConf.select(defaults, key):
            raise ConfigError(f"{key}: means nothing for model.family={family}; leave it at its default")


def _leaves(cfg: DictConfig, key: str) -> list[str]:
    """A section's dotted leaf keys (so a refusal names the field), or the key itself."""
    node = OmegaConf.select(cfg, key)
    return [f"{key}.{name}" for name in node] if isinstance(node, DictConfig) else [key]


def one_of(cfg: DictConfig, choices: dict[str, tuple]) -> None:
    """Refuse a value outside its key's choices."""
    for key, allowed in choices.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: must be one of {', '.join(map(str, allowed))}")


def positive(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{key}={value}: must be positive")
