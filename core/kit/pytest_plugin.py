"""jaxyard's pytest plugin, the ``pytest11`` entry point ``jaxyard``: the fixture ``jaxyard_registry``.

pytest imports this module in every session of an environment where jaxyard is installed, so it
imports pytest and nothing of jaxyard's until the fixture is used: neither the conformance kit
(:mod:`jaxyard.testing`) nor jax.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def jaxyard_registry():
    """The registry as `jaxyard list` builds it: built-ins, installed entry points, registry.toml."""
    from jaxyard.core.registry.loading import build_registry

    return build_registry()
