"""Model families: each supplies its networks, its training step and its checkpoint entries.

The interface is `began_dist.families.base.Family` (docs/design.md, "The family interface").
Importing this package imports every family module; defining a `Family` subclass with a
`name` registers it (FAMILIES) and its config rules (config.validate.FAMILY_RULES). A new
family is one module here plus its name in the import line below.
equilibrium.py (k_t, M, lr control) is BEGAN's equilibrium, used by the families that have one.
"""

from __future__ import annotations

from began_dist.families import began, multigen, vaegan  # noqa: F401  (each registers its family)
from began_dist.families.base import FAMILIES, Family

__all__ = ["FAMILIES", "Family", "get_family"]


def get_family(name: str) -> type[Family]:
    if name not in FAMILIES:
        raise KeyError(f"model.family={name!r} is not available")
    return FAMILIES[name]
