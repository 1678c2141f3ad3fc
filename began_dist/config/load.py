"""Loading a config: OmegaConf merge of the defaults, the family's defaults, a YAML file and
dotted overrides; rebuilding one from a checkpoint's copy; migrating older runs' configs.

Every path ends in `validate`, so a config that loads is one a run accepts. The resolved
config is saved as RUN_DIR/config.yaml and in every checkpoint.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from began_dist import storage
from began_dist.config.schema import Config, ConfigError
from began_dist.config.validate import family_rules, validate
from began_dist.uris import uri_scheme


def _one_line(error: OmegaConfBaseException) -> str:
    """OmegaConf errors span several lines; keep the first, with the dotted key."""
    key = getattr(error, "full_key", None)
    head = str(error).strip().splitlines()[0]
    return f"{key}: {head}" if key and not head.startswith(str(key)) else head


def _read_yaml(path: str) -> DictConfig:
    """A config file as written (a user's, or a run's config.yaml, older runs' unset keys dropped)."""
    # through the storage layer: a run's config.yaml may sit on an object store (`--resume s3://...`)
    return OmegaConf.create(_without_unset(OmegaConf.to_container(OmegaConf.create(storage.read_text(path)))))


def load_config(path: Optional[str] = None, overrides: tuple[str, ...] | list[str] = ()) -> DictConfig:
    """Defaults <- the family's defaults <- YAML file <- dotted overrides, type-checked and validated."""
    if path and not storage.isfile(path):
        raise ConfigError(f"--config: no such file {path!r}")
    try:
        given = OmegaConf.merge(_read_yaml(path) if path else OmegaConf.create(), parse_overrides(overrides))
        refuse_interpolations(given)
        family = family_rules(OmegaConf.merge(OmegaConf.structured(Config), given).model.family)
        # The family's defaults go under the user's values, so a run's config.yaml states them.
        merged = OmegaConf.merge(OmegaConf.structured(Config), family.config_defaults if family else {}, given)
    except OmegaConfBaseException as error:
        raise ConfigError(_one_line(error)) from None
    validate(merged)
    return merged


def refuse_interpolations(given: DictConfig) -> None:
    """Configs are data: refuse `${...}` (interpolations and resolvers such as `${oc.env:...}`).

    A resolver would run when the config is resolved, and its value would be written into
    config.yaml and every checkpoint (`${oc.env:AWS_SECRET_ACCESS_KEY}` would persist a
    secret). Plain `${other.key}` is refused as well: no shipped config or sweep spec uses
    it, and one rule is easier to state than an allow-list.
    """
    for key, value in _leaves(OmegaConf.to_container(given, resolve=False)):
        if isinstance(value, str) and "${" in value:
            raise ConfigError(
                f"{key}={value}: interpolations and resolvers (${{...}}) are not accepted in a config; "
                "write the value itself"
            )


def _leaves(data: Any, prefix: str = ""):
    """(dotted key, value) of every leaf of a container (list items as key.0, key.1, ...)."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else None
    if items is None:
        yield prefix, data
        return
    for name, value in items:
        yield from _leaves(value, f"{prefix}.{name}" if prefix else str(name))


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
    family = family_rules(sections.get("model", {}).get("family", "began"))
    keys = (key.split(".") for key in (family.meaningless_keys if family else ()))
    unset = [(section, name) for section, name in keys if sections.get(section, {}).get(name, "") is None]
    if not unset:
        return data
    cleaned = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    for section, name in unset:
        del cleaned[section][name]
    return cleaned


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)


# Set by Ray's job supervisor in the environment of a `ray job submit` entrypoint
# (ray/dashboard/modules/job/job_supervisor.py, _get_driver_env_vars).
RAY_JOB_MARKER = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def refuse_relative_in_ray_job(path: str, name: str, environ=os.environ) -> None:
    """A relative run directory inside a `ray job submit` entrypoint would land in the job's working
    directory, which Ray creates under its temporary directory and may remove with the job."""
    if RAY_JOB_MARKER in environ and "://" not in path and not os.path.isabs(os.path.expanduser(path)):
        raise ConfigError(
            f"{name}={path or '(default: runs/...)'}: a relative run directory inside a Ray job resolves "
            f"against the job's working directory ({os.getcwd()}), which Ray may delete with the job; give an "
            "absolute path on storage every node sees, or an s3:// URI"
        )


def resolve_run_dir(cfg: DictConfig) -> str:
    """Fill in the default run directory and make a local one absolute (before anything goes to Ray).

    A URI (s3://, gs://, file://) stays as given: every node reaches it through pyarrow.fs;
    other schemes are refused naming run.dir.
    """
    refuse_relative_in_ray_job(cfg.run.dir, "run.dir")
    run_dir = cfg.run.dir or os.path.join("runs", f"{cfg.model.family}-{time.strftime('%Y%m%d-%H%M%S')}")
    if uri_scheme(str(run_dir), "run.dir", ConfigError):
        cfg.run.dir = str(run_dir)
    else:
        cfg.run.dir = os.path.abspath(os.path.expanduser(run_dir))
    return cfg.run.dir
