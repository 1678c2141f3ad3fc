"""Every built-in metric, registered by importing its module; `compute` runs one by name."""

from __future__ import annotations

from began_dist.config import ConfigError
from began_dist.eval import kid  # noqa: F401  (each metric module registers itself)
from began_dist.eval.metrics import inception, msssim, ndb, recon, swd  # noqa: F401
from began_dist.eval.metrics.registry import REGISTRY, MetricContext, check_prerequisites, compute

DEFAULT_METRICS = ("swd", "msssim", "ndb", "recon")  # not kid: its shipped feature net knows glyphs only

__all__ = [
    "DEFAULT_METRICS",
    "REGISTRY",
    "MetricContext",
    "check_metric_names",
    "check_prerequisites",
    "compute",
    "parse_metrics",
]


def parse_metrics(text: str) -> list[str]:
    """'swd,msssim' -> ['swd', 'msssim']; an unknown name is a ConfigError naming what is available."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in REGISTRY]
    if unknown or not names:
        raise ConfigError(
            f"metrics {text!r}: unknown {', '.join(unknown) or '(none given)'}; "
            f"available: {', '.join(sorted(REGISTRY))}"
        )
    return names


def check_metric_names(value: str, field: str = "train.eval_metrics") -> list[str]:
    """`parse_metrics` for a config field: the refusal names the field (config cannot check the names
    itself: it sits below eval and does not import the registry; docs/design.md)."""
    try:
        return parse_metrics(value)
    except ConfigError as error:
        raise ConfigError(f"{field}: {error}") from None
