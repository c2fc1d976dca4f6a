"""What exists: declaring, finding and configuring components.

The hook specifications, the registry entries and their parameters, plugin discovery and
loading, registry files and the resolved configuration of a run. Nothing here imports jax.

In 0.1 ``jaxyard.core.registry`` was the module now at :mod:`jaxyard.core.registry.loading`:
its public names other than the three below still resolve here, with a DeprecationWarning,
until 0.3.
"""

import warnings

from jaxyard.core.registry.loading import Registry, build_registry, normalize_kind

__all__ = ["Registry", "build_registry", "normalize_kind"]

#: 0.1's names of ``jaxyard.core.registry``, by the module that holds them now
_MOVED = {
    **dict.fromkeys(
        ("ENTRY_POINT_GROUP", "ENV_LOAD", "ENV_DISABLE", "ENV_STRICT", "NAME_RE", "Candidate", "unknown_name_message"),
        "jaxyard.core.registry.loading",
    ),
    "FACTORY_KEYWORDS": "jaxyard.core.registry.entries",
}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        where = _MOVED[name]
        message = f"jaxyard.core.registry.{name} moved to {where}.{name} in jaxyard 0.2; the old name goes in 0.3"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(where), name)
    raise AttributeError(f"module 'jaxyard.core.registry' has no attribute {name!r}")
