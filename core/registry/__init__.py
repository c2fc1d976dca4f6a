"""What exists: declaring, finding and configuring components.

The hook specifications, the registry entries and their parameters, plugin discovery and
loading, registry files and the resolved configuration of a run. Nothing here imports jax.
"""

from jaxyard.core.registry.loading import Registry, build_registry, normalize_kind

__all__ = ["Registry", "build_registry", "normalize_kind"]
