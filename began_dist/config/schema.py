"""The configuration schema: four dataclasses (model, data, train, run), every option with its
default, meaning and unit. Loading lives in load.py, the rules common to all runs in validate.py,
each family's own rules with the family (docs/design.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


class ConfigError(ValueError):
    """A refused option: the message names the field and what it allows (exit code 2)."""


@dataclass
class MultigenConfig:
    """model.multigen.*: the multi-generator family (docs/multigen.md).

    Defaults are hope-yao's recipe (seed 000, docs/design.md).
    """

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
    tanh_z: bool = False  # tanh on z: latents in [-1, 1], prior U(-1, 1) (tf-vaegan's option); else N(0, I)


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
    prefetch: int = 2  # batches read ahead of the step in a background thread (0 = read in the step)
    cache_dir: str = ""  # node-local cache: verified-shard records, fetched remote shards ("" = ~/.cache/began-dist)
    cache_gb: float = 50.0  # size bound of the node-local shard cache, GB (least recently used shards go first)
    fetch_ahead: int = 8  # remote shards fetched into the node cache ahead of use, in the sampler's order
    fetch_workers: int = 4  # remote shards one process downloads at once (1 = one after another)
    shapes: str = "square+cross,square"  # shapes: CRS classes (docs/multigen.md), or `four` (the harder set)


@dataclass
class VaeganTrainConfig:
    feature_weight: float = 0.1  # w: G's weight on the Dis_l feature reconstruction (style/content; tf-vaegan: 0.1)
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
    g_ema_half_life: float = 0.0  # steps; > 0: samples and metrics from a moving average of G (docs/evaluation.md)
    lr_control: str = "m_stall"  # m_stall (paper) | decay (Heumi, docs/design.md) | step (carpedm20) | none
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
    deterministic: bool = False  # cuDNN/cuBLAS determinism switches, so a GPU resume is bitwise (slower)
    # layout of weights and activations: auto (rank 0 decides once per run; the decision replaces auto in
    # config.yaml and checkpoints, so resumes reuse it) | channels_last | contiguous (NCHW)
    memory_format: str = "auto"
    vaegan: VaeganTrainConfig = field(default_factory=VaeganTrainConfig)  # model.family=vaegan only
    multigen: MultigenTrainConfig = field(default_factory=MultigenTrainConfig)  # model.family=multigen only


@dataclass
class RunConfig:
    dir: str = ""  # run directory; empty: runs/<family>-<YYYYmmdd-HHMMSS>
    workers: int = 0  # 0 = local mode (one process); N = Ray Train workers
    cpus_per_worker: float = 1.0  # Ray: CPUs per worker
    gpus_per_worker: float = 0.0  # Ray: GPUs per worker
    address: str = ""  # Ray cluster address; empty starts a local cluster
    max_failures: int = 2  # Ray: worker-group restarts before the run fails (an elastic run's node losses not counted)
    # Elastic range (docs/design.md, "Elastic runs"): at least this many workers, at most run.workers; the run
    # shrinks when a node is lost and grows back when capacity returns. None: run.workers (a fixed size).
    min_workers: Optional[int] = None
    resize_interval_s: float = 60.0  # elastic: seconds between checks for room to grow (Ray's resize monitor)
    controller_failure_limit: int = 3  # Ray: placement failures before the run fails
    # Ray Train (workers > 1): seconds a gloo/NCCL collective may wait for a peer before it fails and the
    # worker group restarts; PyTorch's and Ray's default. A peer cut off for longer is given up on.
    collective_timeout_s: int = 1800
    placement_strategy: str = "PACK"  # Ray: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD (one worker per node)
    worker_resources: dict[str, float] = field(default_factory=dict)  # Ray: extra custom resources per worker
    checkpoints_to_keep: int = 3  # most recent checkpoints kept on disk
    # Ray: steps between stop points, where SIGTERM, Ctrl-C, `ray job stop` and drain notices are agreed on and a
    # checkpoint of the last completed step is written (docs/design.md, "Stops and preemption"); local mode: every step
    stop_check_every: int = 10
    # Gradient all-reduce (Ray Train, workers > 1; nothing in local mode), PyTorch's DDP communication hooks:
    grad_compression: str = "none"  # none | fp16 | bf16 (buckets cast for the all-reduce) | powersgd (low rank)
    powersgd_rank: int = 1  # powersgd: rank of each layer's gradient approximation
    powersgd_start_step: int = 1000  # powersgd: plain all-reduces before compressing (PyTorch's default; >= 2)
    powersgd_min_compression_rate: float = 2.0  # powersgd: layers that would shrink less are sent uncompressed
    # DDP's gradient bucket size, MB. Not DDP's 25: D's 18 MB of gradients would fill one bucket, ready only
    # when D's backward ends; 4 MB buckets overlap the all-reduce with it (docs/performance.md, "Bucket size").
    bucket_cap_mb: float = 4.0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


CHOICES = {
    "model.arch": ("repeat", "skip"),
    "model.output": ("linear", "tanh"),
    "model.channels": (1, 3),
    "data.source": ("glyphs", "shapes", "folder", "shards"),
    "train.lr_control": ("m_stall", "decay", "step", "none"),
    "train.update_order": ("alternating", "simultaneous"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.memory_format": ("auto", "channels_last", "contiguous"),
    "run.grad_compression": ("none", "fp16", "bf16", "powersgd"),
    "run.placement_strategy": ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
}
IMAGE_SIZES = (16, 32, 64, 128, 256)
