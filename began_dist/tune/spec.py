"""Sweep specifications: `tune/*.yaml` read, overridden and checked before any trial starts.

A spec is plain data (the dotted keys are the training config's):

    base:                      # training-config overrides shared by every trial
      model.image_size: 32
    space:                     # dotted key -> a domain; "k1,k2" ties keys (one value list each point)
      train.gamma: {grid: [0.3, 0.5]}
      train.lr: {loguniform: [1.0e-5, 1.0e-3]}
      model.nz,model.nh: {grid: [[32, 32], [64, 64]]}
    scheduler: {type: asha, grace_period: 200}    # or pbt / none
    metric: M                  # or an evaluation metric (swd, ...)
    mode: min
    num_samples: 1
    workers_per_trial: 1       # > 1: each trial is a distributed Ray Train run (not with PBT)

`load_spec` returns the spec and the base training config. Every refusal is a
`ConfigError` naming the key (exit 2), raised before Ray is touched: unknown keys,
a space over a key the config does not have, an unknown domain, a value the
config refuses, PBT over a key a checkpoint does not survive, PBT with nested
multi-worker trials.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf

from began_dist import families, storage  # noqa: F401  (families registers every family's config rules: docs/design.md)
from began_dist.config import Config, ConfigError, load_config, parse_overrides, validate

DOMAINS = {  # name -> number of arguments (None: a list of values)
    "grid": None,
    "choice": None,
    "uniform": 2,
    "loguniform": 2,
    "randint": 2,
}
SCHEDULER_KEYS = {  # type -> its settable keys (in steps where a time is meant)
    "none": set(),
    "asha": {"grace_period", "reduction_factor", "max_t", "brackets"},
    "pbt": {"perturbation_interval", "quantile_fraction", "resample_probability", "burn_in_period"},
}
# What PBT may mutate: values a checkpoint survives (shapes, data and seed do not).
PBT_MUTABLE = {
    "train.gamma",
    "train.lambda_k",
    "train.lr",
    "train.lr_min",
    "train.lr_decay_factor",
    "train.lr_decay_every",
    "train.m_stall_window",
    "train.m_stall_eps",
    "train.beta1",
    "train.beta2",
}
# Set per trial by the sweep itself, so a spec may not search or fix them.
SWEEP_OWNED = {"run.dir", "run.workers", "run.cpus_per_worker", "run.gpus_per_worker", "run.address"}


@dataclass
class SweepSpec:
    base: dict[str, Any] = field(default_factory=dict)
    space: dict[str, dict] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=lambda: {"type": "none"})
    metric: str = "M"
    mode: str = "min"
    num_samples: int = 1
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_concurrent_trials: int = 0  # 0: as many as the cluster's resources allow
    driver_cpus: float = 0.01  # CPU of a nested trial's driver (its workers ask for their own)
    name: str = ""  # the spec file's stem; names the default sweep directory

    @property
    def scheduler_type(self) -> str:
        return self.scheduler.get("type", "none")

    def to_dict(self) -> dict:
        return asdict(self)


def split_keys(group: str) -> list[str]:
    return [key.strip() for key in group.split(",")]


def load_spec(path: str, overrides: list[str] = ()) -> tuple[SweepSpec, DictConfig]:
    """Read SPEC, apply `tune.<key>=` and training overrides, check everything; (spec, base config)."""
    if not os.path.isfile(path):
        raise ConfigError(f"SPEC: no such file {path!r}")
    with open(path) as handle:
        raw = yaml.safe_load(handle) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep spec is a mapping of base, space, scheduler, metric, ...")
    raw.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    spec_overrides = [item[len("tune.") :] for item in overrides if item.startswith("tune.")]
    config_overrides = [item for item in overrides if not item.startswith("tune.")]
    if any(item.startswith("scheduler.type=") for item in spec_overrides):
        raw["scheduler"] = {}  # another scheduler: the spec's settings were for the old one
    if spec_overrides:
        raw = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(raw), parse_overrides(spec_overrides)))
    spec = spec_from_dict(raw)
    base = base_config(spec, config_overrides)
    if spec.metric == "M" and base.model.family == "vaegan":
        raise ConfigError("metric=M: the vaegan family has no M (no equilibrium); use tune.metric=swd or recon")
    check_space(spec, base)
    return spec, base


def spec_from_dict(raw: dict) -> SweepSpec:
    known = set(SweepSpec.__dataclass_fields__)
    for key in raw:
        if key not in known:
            raise ConfigError(f"spec key {key!r}: unknown; the keys are {', '.join(sorted(known))}")
    spec = SweepSpec(**copy.deepcopy(raw))
    for key in ("base", "space", "scheduler"):
        if not isinstance(getattr(spec, key), dict):
            raise ConfigError(f"spec key {key!r}: must be a mapping")
    check_top_level(spec)
    return spec


def check_top_level(spec: SweepSpec) -> None:
    kind = spec.scheduler_type
    if kind not in SCHEDULER_KEYS:
        raise ConfigError(f"scheduler.type={kind!r}: must be one of {', '.join(SCHEDULER_KEYS)}")
    for key in spec.scheduler:
        if key != "type" and key not in SCHEDULER_KEYS[kind]:
            allowed = ", ".join(sorted(SCHEDULER_KEYS[kind])) or "none"
            raise ConfigError(f"scheduler.{key}: not a setting of the {kind} scheduler (settings: {allowed})")
    for key in ("grace_period", "perturbation_interval", "max_t"):
        value = spec.scheduler.get(key)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ConfigError(f"scheduler.{key}={value!r}: must be a positive number of steps")
    if kind == "pbt" and "perturbation_interval" not in spec.scheduler:
        raise ConfigError("scheduler.perturbation_interval: required with PBT (steps between exploits)")
    if spec.mode not in ("min", "max"):
        raise ConfigError(f"mode={spec.mode!r}: must be min or max")
    if spec.metric != "M":
        from began_dist.eval.metrics import parse_metrics

        try:
            parse_metrics(spec.metric)
        except ConfigError as error:
            raise ConfigError(f"metric={spec.metric!r}: M or one evaluation metric ({error})") from None
        if "," in spec.metric:
            raise ConfigError(f"metric={spec.metric!r}: one objective only")
    if not isinstance(spec.num_samples, int) or spec.num_samples < 1:
        raise ConfigError(f"num_samples={spec.num_samples!r}: must be a positive integer")
    if not isinstance(spec.workers_per_trial, int) or spec.workers_per_trial < 1:
        raise ConfigError(f"workers_per_trial={spec.workers_per_trial!r}: must be a positive integer")
    if kind == "pbt" and spec.workers_per_trial > 1:
        raise ConfigError(
            "workers_per_trial: PBT trials run the loop in the trial itself (one worker); "
            "use grid or ASHA for multi-worker trials"
        )
    if spec.cpus_per_worker <= 0 or spec.gpus_per_worker < 0 or spec.driver_cpus <= 0:
        raise ConfigError("cpus_per_worker and driver_cpus must be > 0 and gpus_per_worker >= 0")
    if spec.max_concurrent_trials < 0:
        raise ConfigError(f"max_concurrent_trials={spec.max_concurrent_trials}: must be >= 0 (0 = no limit)")
    if not spec.space:
        raise ConfigError("space: empty; a sweep needs at least one searched key")


def base_config(spec: SweepSpec, config_overrides: list[str]) -> DictConfig:
    """The training config every trial starts from: defaults <- spec.base <- command-line overrides."""
    for key in spec.base:
        _check_config_key(key, f"base.{key}")
        if key in SWEEP_OWNED:
            raise ConfigError(f"base.{key}: set by the sweep (use run.dir= on the command line for the sweep root)")
    base_items = [f"{key}={_dotlist_value(value)}" for key, value in spec.base.items()]
    if any(item.split("=", 1)[0].strip() == "run.min_workers" for item in [*base_items, *config_overrides]):
        # Tune places each trial at a fixed size, and PBT's exploits copy checkpoints between trials:
        # an elastic range (began_dist/distributed/elastic.py) belongs to `began-dist train`.
        raise ConfigError(
            f"run.min_workers: a sweep's trials have a fixed worker count (workers_per_trial="
            f"{spec.workers_per_trial}, scheduler.type={spec.scheduler_type}); elastic ranges are for "
            "`began-dist train`: leave run.min_workers unset"
        )
    try:
        return load_config(None, [*base_items, *config_overrides])
    except ConfigError as error:
        raise ConfigError(f"base: {error}") from None


def _dotlist_value(value: Any) -> str:
    """A YAML value as OmegaConf's dotlist parser reads it back."""
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def _check_config_key(key: str, where: str) -> None:
    node: Any = OmegaConf.structured(Config)
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            raise ConfigError(f"{where}: {key!r} is not a training config key")
        node = node[part]


def check_space(spec: SweepSpec, base: DictConfig) -> None:
    """Each searched key exists, each domain is known, and each value is one the config accepts."""
    for group, domain in spec.space.items():
        keys = split_keys(group)
        where = f"space.{group}"
        for key in keys:
            _check_config_key(key, where)
            if key in SWEEP_OWNED:
                raise ConfigError(f"{where}: {key} is set by the sweep, not searched")
            if spec.scheduler_type == "pbt" and key not in PBT_MUTABLE:
                raise ConfigError(
                    f"{where}: PBT can only mutate values a checkpoint survives "
                    f"({', '.join(sorted(PBT_MUTABLE))}); search {key} with grid or ASHA"
                )
        name, values = parse_domain(domain, where)
        for value in domain_points(name, values):
            _check_point(base, keys, value, where)


def parse_domain(domain: Any, where: str) -> tuple[str, list]:
    if not (isinstance(domain, dict) and len(domain) == 1):
        raise ConfigError(f"{where}: a domain is one of {{{', '.join(DOMAINS)}: ...}}, got {domain!r}")
    ((name, values),) = domain.items()
    if name not in DOMAINS:
        raise ConfigError(f"{where}: unknown domain {name!r}; the domains are {', '.join(DOMAINS)}")
    arity = DOMAINS[name]
    if not isinstance(values, list) or not values or (arity is not None and len(values) != arity):
        shape = "a non-empty list of values" if arity is None else "[low, high]"
        raise ConfigError(f"{where}: {name} takes {shape}, got {values!r}")
    if arity is not None and not values[0] < values[1]:
        raise ConfigError(f"{where}: {name} needs low < high, got {values!r}")
    if name == "loguniform" and values[0] <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {values!r}")
    return name, values


def domain_points(name: str, values: list) -> list:
    """The values to check: every listed value, or a range's ends (randint's high is exclusive)."""
    if name == "randint":
        return [values[0], values[1] - 1]
    return list(values)


def _check_point(base: DictConfig, keys: list[str], value: Any, where: str) -> None:
    assigned = value if len(keys) > 1 else [value]
    if len(keys) > 1 and not (isinstance(value, list) and len(value) == len(keys)):
        raise ConfigError(f"{where}: each value of tied keys is a list of {len(keys)}, got {value!r}")
    trial = copy.deepcopy(base)
    try:
        for key, item in zip(keys, assigned):
            OmegaConf.update(trial, key, item, merge=False)
        validate(trial)
    except ConfigError as error:
        raise ConfigError(f"{where}: value {value!r}: {error}") from None
    except Exception as error:  # OmegaConf type errors: '0.5' for an int key
        raise ConfigError(f"{where}: value {value!r}: {str(error).splitlines()[0]}") from None


def apply_params(base: dict, params: dict[str, Any]) -> DictConfig:
    """A trial's training config: the base with the trial's point of the space assigned."""
    cfg = OmegaConf.merge(OmegaConf.structured(Config), base)
    for group, value in params.items():
        keys = split_keys(group)
        for key, item in zip(keys, value if len(keys) > 1 else [value]):
            OmegaConf.update(cfg, key, item, merge=False)
    return cfg


def save_spec(spec: SweepSpec, path: str) -> None:
    storage.write_text(path, yaml.safe_dump(spec.to_dict(), sort_keys=False, allow_unicode=True))


def read_saved_spec(path: str) -> Optional[SweepSpec]:
    if not storage.isfile(path):
        return None
    return spec_from_dict(yaml.safe_load(storage.read_text(path)))
