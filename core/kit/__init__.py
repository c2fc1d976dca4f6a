"""The conformance kit (public name :mod:`jaxyard.testing`): checks that a plugin's components keep
the contracts of :mod:`jaxyard.core.registry.hookspecs`.

One test file gives a plugin package a test per component and check::

    from jaxyard.testing import parametrize_with_checks

    @parametrize_with_checks(distribution="jaxyard-my-plugin")
    def test_conformance(entry, check, tmp_path):
        check(entry, tmp_path)

The components are found the way ``jaxyard list`` finds them (the real entry points, through
:func:`jaxyard.build_registry`), so the test fails when the package is not installed or its
entry point is wrong. The same checks run without pytest::

    from jaxyard.testing import check_component
    check_component("optimizer:signsgd")      # {"jit_equals_eager": "passed", ...}; AssertionError on failure

``tier="api"`` runs only the checks that train nothing (registration, parameters, what the
factory returns, shapes); ``tier="full"`` (the default) adds the numerical ones (a toy problem
optimised, jit against eager, checkpoints written and damaged). A check that does not apply
to a component is opted out with the reason, ``skip={"optimizer:sam": {"jit_equals_eager":
"uses host callbacks"}}`` (keys are ``KIND:NAME`` and check names, ``fnmatch`` patterns allowed);
an opt-out that matches nothing is an error, so a typo does not silently skip. Components
that need values to be built (a loader's file) get them with ``params={"loader:npz": {...}}``
(a dict, or a callable receiving the test's temporary directory and returning one). Models and
loaders are checked against a task, ``task={"model:gpt": "next_token"}`` (models: classification
unless named; loaders: the first task that accepts their data); a task is checked on the kit's
small example data (:mod:`jaxyard.core.kit.examples`), or on its own ``kit_example``.

Where things are: :mod:`~jaxyard.core.kit.harness` (what a check is, discovery, opt-outs,
messages, :func:`check_component`, :func:`parametrize_with_checks`), one module per kind in
:mod:`jaxyard.core.kit.checks`, the example data and models of :mod:`~jaxyard.core.kit.examples`,
and :mod:`~jaxyard.core.kit.pytest_plugin` (the ``pytest11`` entry point: the fixture
``jaxyard_registry``, the registry as ``jaxyard list`` builds it).
This package loads its names on first use, so importing it (or the pytest plugin, which pytest
imports in every session) loads neither the checks nor jax; the checks import jax, flax, optax
and numpy themselves.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - loaded on first use, below
    from jaxyard.core.kit.harness import (
        CHECKS,
        TIERS,
        Check,
        CheckSkipped,
        check_component,
        checks_for,
        components,
        parametrize_with_checks,
    )

__all__ = [
    "CHECKS",
    "TIERS",
    "Check",
    "CheckSkipped",
    "check_component",
    "checks_for",
    "components",
    "parametrize_with_checks",
]

#: Submodules that are not looked up among the kit's names (importing them must load nothing else).
_SUBMODULES = ("harness", "checks", "examples", "pytest_plugin", "scaffold")


def __getattr__(name: str) -> Any:
    """A name of the harness (``__all__`` and the rest of its public names) or a check function of
    :mod:`jaxyard.core.kit.checks`, loaded with every check on first use."""
    if name.startswith("_") or name in _SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    harness = importlib.import_module(f"{__name__}.harness")
    checks = importlib.import_module(f"{__name__}.checks")
    if name in harness.__all__:
        value = getattr(harness, name)
    else:
        found = [getattr(m, name) for m in checks.MODULES if getattr(getattr(m, name, None), "__module__", None) == m.__name__]
        if not found:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = found[0]
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The names loaded so far and ``__all__`` (for completion)."""
    return sorted({*globals(), *__all__})
