"""Configuration as plain data: the lowest layer, importing nothing else of began_dist but uris.

schema.py    the dataclasses (every option with its default, meaning and unit)
load.py      OmegaConf merge of defaults, family defaults, YAML file and overrides; older runs
validate.py  the rules every run obeys, and the registry through which families add theirs
"""

from began_dist.config.load import (
    from_container,
    load_config,
    parse_overrides,
    resolve_run_dir,
    to_container,
)
from began_dist.config.schema import (
    CHOICES,
    IMAGE_SIZES,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    MultigenConfig,
    MultigenTrainConfig,
    RunConfig,
    TrainConfig,
    VaeganModelConfig,
    VaeganTrainConfig,
)
from began_dist.config.validate import (
    FAMILY_RULES,
    FamilyRules,
    family_rules,
    register_family_rules,
    validate,
    worker_range,
)

__all__ = [
    "CHOICES",
    "FAMILY_RULES",
    "IMAGE_SIZES",
    "Config",
    "ConfigError",
    "DataConfig",
    "FamilyRules",
    "ModelConfig",
    "MultigenConfig",
    "MultigenTrainConfig",
    "RunConfig",
    "TrainConfig",
    "VaeganModelConfig",
    "VaeganTrainConfig",
    "family_rules",
    "from_container",
    "load_config",
    "parse_overrides",
    "register_family_rules",
    "resolve_run_dir",
    "to_container",
    "validate",
    "worker_range",
]
