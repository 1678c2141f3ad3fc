"""Configuration as plain data.

Four dataclasses (model, data, train, run) hold every option with its default,
meaning and unit. `load_config` merges them with a YAML file and dotted
`key=value` overrides through OmegaConf structured configs, then `validate`
refuses anything impossible *before* any work starts, with a one-line message
naming the field. The resolved config is saved as `RUN_DIR/config.yaml` and in
every checkpoint.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A refused option: the message names the field and what it allows (exit code 2)."""


@dataclass
class MultigenConfig:
    """model.multigen.*: the multi-generator family (SPEC 2; docs/multigen.md). Defaults are seed 000's recipe."""

    z_sizes: list[int] = field(default_factory=lambda: [4, 16])  # latent size of each G_k (K = len); D's code alike
    composition: str = "sum"  # image from parts: sum (seed: 2 sum_k y_k G_k - 1) | max (2 max over on parts - 1)
    shared_z: int = 0  # latent units every G_k reads besides its own slice (what the parts share: pose); D's code alike
    reconstruction: str = "l1"  # L_rec: l1 (BEGAN, seed) | l2 (mean squared error)
    latent_loss: str = "l2"  # L_z(dz_f): l2 = ||z - dz|| per image (seed README) | l1 | mse
    latent_weight: float = 1.0  # weight of L_z in every combined term (L_rec + w L_z)
    real_code_loss: str = "moments"  # L_z(dz_r): moments = real codes match U(-1,1)'s mean and variance (seed) | none
    latent_adversarial: bool = True  # seed: L_D has -k_t L_z(dz_f); false: D minimises +L_z(dz_f) too (InfoGAN-style)
    real_recon_weight: float = 0.0  # G rebuilds real images from D's detached real codes: |sum y_k G_k(E(x)_k) - x|
    diversity_weight: float = 0.0  # mode seeking per generator: 1 / (mean|G_k(z)-G_k(z')| / mean|z_k-z'_k| + 1e-5)


@dataclass
class VaeganModelConfig:
    tanh_z: bool = False  # tanh on z: latents in [-1, 1], prior U(-1, 1) (seed 002's option); else N(0, I)


@dataclass
class ModelConfig:
    family: str = "began"  # model family: began | multigen | vaegan
    image_size: int = 32  # image height = width, pixels; a power of two in 16..256
    channels: int = 1  # image channels: 1 (grayscale) or 3 (RGB)
    arch: str = "repeat"  # repeat (paper) | skip (h0 skip connections to every scale)
    filters: int = 64  # n: conv filters of the first scale (encoder grows n, 2n, 3n, ...)
    nz: int = 64  # Nz: generator latent size
    nh: int = 64  # Nh: discriminator bottleneck (embedding) size
    convs_per_scale: int = 2  # r: 3x3 convs per scale
    vanishing_residual: bool = False  # paper's vanishing residual: conv layers start as identity
    residual_steps: int = 16000  # steps over which the residual carry falls from 1 to 0
    output: str = "linear"  # last layer: linear (paper) or tanh
    multigen: MultigenConfig = field(default_factory=MultigenConfig)  # model.family=multigen only
    vaegan: VaeganModelConfig = field(default_factory=VaeganModelConfig)  # model.family=vaegan only


@dataclass
class DataConfig:
    source: str = "glyphs"  # glyphs | shapes | folder | shards
    path: str = ""  # image folder (folder) or dataset directory (shards)
    limit: int = 0  # use only the first N images (0 = all)
    glyphs: int = 4096  # glyphs: number of CJK characters, from U+4E00 upwards
    font: str = ""  # glyphs: font file (.ttf/.otf/.ttc); empty = bundled Noto Sans CJK
    font_index: int = 2  # glyphs: face index inside a .ttc (Noto: 2 = Simplified Chinese)
    shapes: str = "square+cross,square"  # shapes: CRS classes to train on (SPEC 2), or `four` (the harder set)


@dataclass
class VaeganTrainConfig:
    feature_weight: float = 0.1  # w: G's weight on the Dis_l feature reconstruction (style/content; seed 0.1)
    kl_weight: float = 1.0  # E's weight on KL(q(z|x) || p(z)) (Larsen: 1)
    g_steps: int = 2  # G steps per step (the seed: one D step, two G steps, one E step)


@dataclass
class MultigenTrainConfig:
    # one gamma per generator (model.multigen.z_sizes order), each with its own k_k (docs/multigen.md);
    # None: one k_t on the whole terms with train.gamma
    gammas: Optional[list[float]] = None


@dataclass
class TrainConfig:
    steps: int = 2000  # total steps of the run (also on resume)
    batch_size: int = 16  # global batch: images per step, all workers together
    seed: int = 0  # fixes weights, data order and latents
    gamma: float = 0.5  # diversity ratio E[L(G(z))] / E[L(x)], in (0, 1]
    lambda_k: float = 0.001  # k_t learning rate
    lr: float = 1.0e-4  # base Adam learning rate (G and D); live lr = lr x lr_state multiplier
    beta1: float = 0.5  # Adam beta1
    beta2: float = 0.999  # Adam beta2
    lr_control: str = "m_stall"  # m_stall (paper) | decay (seed 004) | step (carpedm20) | none
    lr_min: float = 2.0e-5  # floor of the live lr
    lr_decay_factor: Optional[float] = None  # lr multiplier per decision; None: 0.5 (m_stall, step), 0.95 (decay)
    lr_decay_every: Optional[int] = None  # steps between decay/step decisions; None: 2000 (decay), 100000 (step)
    m_stall_window: int = 1000  # steps per window of M compared by m_stall
    m_stall_eps: float = 0.0  # m_stall: halve unless mean M fell by more than this fraction
    update_order: str = "alternating"  # alternating (D step, then G step with fresh z) | simultaneous
    checkpoint_every: int = 1000  # steps between checkpoints (and one at the end)
    log_every: int = 50  # steps between stats.jsonl / TensorBoard scalar lines
    sample_every: int = 500  # steps between image grids in samples/ and TensorBoard
    eval_every: int = 0  # steps between metric evaluations (0 = never)
    eval_metrics: str = "swd,msssim,ndb,recon"  # metrics run every eval_every steps (rank 0)
    eval_n: int = 1024  # images per set (real and generated) in those evaluations
    compile: bool = False  # torch.compile the networks
    precision: str = "fp32"  # fp32 | bf16 | fp16 (mixed precision; on a CPU bf16 only, with avx512_bf16 or AMX)
    device: str = "auto"  # auto (CUDA when present, else CPU) | cpu | cuda
    vaegan: VaeganTrainConfig = field(default_factory=VaeganTrainConfig)  # model.family=vaegan only
    multigen: MultigenTrainConfig = field(default_factory=MultigenTrainConfig)  # model.family=multigen only


@dataclass
class RunConfig:
    dir: str = ""  # run directory; empty: runs/<family>-<YYYYmmdd-HHMMSS>
    workers: int = 0  # 0 = local mode (one process); N = Ray Train workers
    cpus_per_worker: float = 1.0  # Ray: CPUs per worker
    gpus_per_worker: float = 0.0  # Ray: GPUs per worker
    address: str = ""  # Ray cluster address; empty starts a local cluster
    max_failures: int = 2  # Ray: worker-group restarts before the run fails
    controller_failure_limit: int = 3  # Ray: placement failures before the run fails
    placement_strategy: str = "PACK"  # Ray: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD (one worker per node)
    worker_resources: dict[str, float] = field(default_factory=dict)  # Ray: extra custom resources per worker
    checkpoints_to_keep: int = 3  # most recent checkpoints kept on disk


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


CHOICES = {
    "model.family": ("began", "multigen", "vaegan"),
    "model.arch": ("repeat", "skip"),
    "model.output": ("linear", "tanh"),
    "model.channels": (1, 3),
    "data.source": ("glyphs", "shapes", "folder", "shards"),
    "train.lr_control": ("m_stall", "decay", "step", "none"),
    "train.update_order": ("alternating", "simultaneous"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
    "run.placement_strategy": ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
}
IMAGE_SIZES = (16, 32, 64, 128, 256)
MULTIGEN_CHOICES = {
    "model.multigen.reconstruction": ("l1", "l2"),
    "model.multigen.latent_loss": ("l2", "l1", "mse"),
    "model.multigen.real_code_loss": ("moments", "none"),
    "model.multigen.composition": ("sum", "max"),
}
# Each family's defaults, applied over the dataclasses' and before the user's file and overrides,
# so a run's config.yaml states them. vaegan: seed 002's recipe (Adam 2e-4, beta1 0.5, batch 64, Nz 100).
FAMILY_DEFAULTS = {
    "vaegan": {
        "model": {"nz": 100, "output": "tanh"},
        "train": {"lr": 2.0e-4, "beta1": 0.5, "batch_size": 64, "lr_control": "none"},
    },
}
# Keys that mean nothing for a family: refused when they differ from their default.
FAMILY_ONLY = {"vaegan": ("model.vaegan", "train.vaegan"), "multigen": ("model.multigen", "train.multigen")}
MEANINGLESS = {
    # multigen: its latent is model.multigen.z_sizes, D's code the same; its step is alternating fp32 eager
    "multigen": ("model.nz", "model.nh", "train.update_order", "train.compile", "train.precision"),
    "vaegan": (
        "model.nh",
        "model.vanishing_residual",
        "model.residual_steps",
        "train.gamma",
        "train.lambda_k",
        "train.update_order",
        "train.compile",
        "train.precision",
    ),
}
LR_CONTROL_DEFAULTS = {"m_stall": (0.5, None), "decay": (0.95, 2000), "step": (0.5, 100000), "none": (1.0, None)}


def _one_line(error: OmegaConfBaseException) -> str:
    """OmegaConf errors span several lines; keep the first, with the dotted key."""
    key = getattr(error, "full_key", None)
    head = str(error).strip().splitlines()[0]
    return f"{key}: {head}" if key and not head.startswith(str(key)) else head


def _read_yaml(path: str) -> DictConfig:
    """A config file as written (a user's, or a run's config.yaml, older runs' unset keys dropped)."""
    return OmegaConf.create(_without_unset(OmegaConf.to_container(OmegaConf.load(path))))


def load_config(path: Optional[str] = None, overrides: tuple[str, ...] | list[str] = ()) -> DictConfig:
    """Defaults <- the family's defaults <- YAML file <- dotted overrides, type-checked and validated."""
    if path and not os.path.isfile(path):
        raise ConfigError(f"--config: no such file {path!r}")
    try:
        given = OmegaConf.merge(_read_yaml(path) if path else OmegaConf.create(), parse_overrides(overrides))
        family = OmegaConf.merge(OmegaConf.structured(Config), given).model.family
        merged = OmegaConf.merge(OmegaConf.structured(Config), FAMILY_DEFAULTS.get(family, {}), given)
    except OmegaConfBaseException as error:
        raise ConfigError(_one_line(error)) from None
    validate(merged)
    return merged


def parse_overrides(overrides) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r}: expected dotted key=value, e.g. train.gamma=0.4")
    return OmegaConf.from_dotlist(list(overrides))


def from_container(data: dict[str, Any]) -> DictConfig:
    """Rebuild a typed config from a plain dict (a checkpoint's or Ray's copy)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), _without_unset(data))
    except OmegaConfBaseException as error:
        raise ConfigError(_one_line(error)) from None
    validate(merged)
    return merged


def _without_unset(data: dict[str, Any]) -> dict[str, Any]:
    """`data` minus the keys meaning nothing for its family that older runs stored as None.

    Runs made before the family defaults wrote e.g. multigen's model.nz as None ("does not
    apply"); their checkpoints load with those keys at the default, as newer runs store them.
    """
    sections = {key: value for key, value in data.items() if isinstance(value, dict)} if isinstance(data, dict) else {}
    family = sections.get("model", {}).get("family", "began")
    keys = (key.split(".") for key in MEANINGLESS.get(family, ()))
    unset = [(section, name) for section, name in keys if sections.get(section, {}).get(name, "") is None]
    if not unset:
        return data
    cleaned = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    for section, name in unset:
        del cleaned[section][name]
    return cleaned


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)


def validate(cfg: DictConfig) -> None:
    """Refuse impossible values, naming the field and what it allows."""
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: must be one of {', '.join(map(str, allowed))}")
    m, d, t, r = cfg.model, cfg.data, cfg.train, cfg.run
    _check_family_keys(cfg)
    if m.family == "multigen":
        _check_multigen(cfg)
    if m.image_size not in IMAGE_SIZES:
        raise ConfigError(f"model.image_size={m.image_size}: must be a power of two in 16..256 ({IMAGE_SIZES})")
    _positive(cfg, "model.filters", "model.nz", "model.nh", "model.convs_per_scale", "model.residual_steps")
    _positive(cfg, "train.steps", "train.batch_size", "train.lr", "train.checkpoint_every", "train.log_every")
    _positive(cfg, "train.sample_every", "train.m_stall_window", "run.checkpoints_to_keep")
    if not 0.0 < t.gamma <= 1.0:
        raise ConfigError(f"train.gamma={t.gamma}: must be in (0, 1]")
    if not 0.0 <= t.lambda_k <= 1.0:
        raise ConfigError(f"train.lambda_k={t.lambda_k}: must be in [0, 1]")
    for key in ("train.beta1", "train.beta2"):
        if not 0.0 <= OmegaConf.select(cfg, key) < 1.0:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)}: must be in [0, 1)")
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
    if t.eval_every:
        _check_eval(t)
    if r.workers < 0:
        raise ConfigError(f"run.workers={r.workers}: must be >= 0 (0 = local mode)")
    if r.workers > 0 and t.batch_size % r.workers:
        raise ConfigError(
            f"train.batch_size={t.batch_size}: must be divisible by run.workers={r.workers} (global batch split evenly)"
        )
    if r.cpus_per_worker <= 0 or r.gpus_per_worker < 0:
        raise ConfigError("run.cpus_per_worker must be > 0 and run.gpus_per_worker >= 0")
    if r.max_failures < 0 or r.controller_failure_limit < 0:
        raise ConfigError("run.max_failures and run.controller_failure_limit must be >= 0")
    if d.source in ("folder", "shards") and not d.path:
        raise ConfigError(f"data.path: required with data.source={d.source}")
    if d.limit < 0 or d.glyphs <= 0:
        raise ConfigError("data.limit must be >= 0 and data.glyphs > 0")
    if t.precision == "fp16" and t.device == "cpu":
        raise ConfigError("train.precision=fp16: needs train.device=cuda or auto (a CPU can use bf16)")


def _check_multigen(cfg: DictConfig) -> None:
    mg = cfg.model.multigen
    for key, allowed in MULTIGEN_CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: must be one of {', '.join(allowed)}")
    if not mg.z_sizes or any(size <= 0 for size in mg.z_sizes):
        raise ConfigError(f"model.multigen.z_sizes={list(mg.z_sizes)}: one positive latent size per generator")
    for key in ("shared_z", "latent_weight", "real_recon_weight", "diversity_weight"):
        if mg[key] < 0:
            raise ConfigError(f"model.multigen.{key}={mg[key]}: must be >= 0")
    if cfg.data.source not in ("shapes", "shards"):
        raise ConfigError(f"data.source={cfg.data.source}: model.family=multigen needs labelled data (shapes|shards)")
    if cfg.train.multigen.gammas is not None:
        _check_gammas(cfg)


def _check_gammas(cfg: DictConfig) -> None:
    """One gamma in (0, 1] per generator; train.gamma then means nothing, so it must stay at its default."""
    gammas, count = list(cfg.train.multigen.gammas), len(cfg.model.multigen.z_sizes)
    if len(gammas) != count:
        raise ConfigError(
            f"train.multigen.gammas={gammas}: needs one gamma per generator ({count}, as model.multigen.z_sizes)"
        )
    if not all(0.0 < gamma <= 1.0 for gamma in gammas):
        raise ConfigError(f"train.multigen.gammas={gammas}: each must be in (0, 1]")
    if cfg.train.gamma != TrainConfig.gamma:
        raise ConfigError(f"train.gamma={cfg.train.gamma}: means nothing with train.multigen.gammas; leave it unset")


def _check_family_keys(cfg: DictConfig) -> None:
    """Refuse another family's keys, and keys this family ignores, when they are not at their defaults."""
    family, defaults = cfg.model.family, OmegaConf.structured(Config)
    foreign = [key for name, keys in FAMILY_ONLY.items() if name != family for key in keys]
    ignored = [leaf for name in foreign + list(MEANINGLESS.get(family, ())) for leaf in _leaves(defaults, name)]
    for key in ignored:
        if OmegaConf.select(cfg, key) != OmegaConf.select(defaults, key):
            raise ConfigError(f"{key}: means nothing for model.family={family}; leave it at its default")
    for key in ("train.vaegan.feature_weight", "train.vaegan.kl_weight"):
        if not 0.0 <= OmegaConf.select(cfg, key) < math.inf:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)}: must be >= 0 and finite")
    _positive(cfg, "train.vaegan.g_steps")


def _leaves(cfg: DictConfig, key: str) -> list[str]:
    """A section's dotted leaf keys (so a refusal names the field), or the key itself."""
    node = OmegaConf.select(cfg, key)
    return [f"{key}.{name}" for name in node] if isinstance(node, DictConfig) else [key]


def _check_eval(t: DictConfig) -> None:
    from began_dist.eval.metrics import parse_metrics  # the metric registry, only when evaluation is on

    try:
        parse_metrics(t.eval_metrics)
    except ConfigError as error:
        raise ConfigError(f"train.eval_metrics: {error}") from None
    if t.eval_n < 2:
        raise ConfigError(f"train.eval_n={t.eval_n}: must be at least 2")


def _positive(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{key}={value}: must be positive")


def lr_schedule_params(train: TrainConfig | DictConfig) -> tuple[float, Optional[int]]:
    """(factor, every) for the lr-control scheme, with the scheme's defaults filled in."""
    factor, every = LR_CONTROL_DEFAULTS[train.lr_control]
    if train.lr_decay_factor is not None:
        factor = train.lr_decay_factor
    if train.lr_decay_every is not None:
        every = train.lr_decay_every
    return factor, every


def resolve_run_dir(cfg: DictConfig) -> str:
    """Fill in the default run directory and make it absolute (before anything goes to Ray)."""
    run_dir = cfg.run.dir or os.path.join("runs", f"{cfg.model.family}-{time.strftime('%Y%m%d-%H%M%S')}")
    cfg.run.dir = os.path.abspath(os.path.expanduser(run_dir))
    return cfg.run.dir


def save_yaml(cfg: DictConfig, path: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        handle.write(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, path)
