"""Module paths that are names for other modules.

``jaxyard.testing`` is the conformance kit's public name (it lives in ``jaxyard.core.kit``).
The modules of the flat ``jaxyard.core`` of 0.1 moved into sub-packages in 0.2; their old paths
still import, for one minor release, and warn with the new path (``DeprecationWarning``). Each
old path is the new module itself, not a copy: ``isinstance`` checks and monkeypatching agree.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

#: public names that are other modules, for good
ALIASES = {"jaxyard.testing": "jaxyard.core.kit"}

#: jaxyard 0.1's module paths, importable until 0.3
MOVED = {
    f"jaxyard.core.{old}": f"jaxyard.core.{new}"
    for old, new in {
        "entries": "registry.entries",
        "hookspecs": "registry.hookspecs",
        "params": "registry.params",
        "describe": "registry.describe",
        "settings": "registry.settings",
        "config": "registry.config",
        "layout": "scale.layout",
        "processes": "scale.processes",
        "launch": "scale.launch",
        "rundir": "store.rundir",
        "checkpoint": "store.checkpoint",
        "policy": "store.policy",
        "state": "store.state",
        "data": "train.data",
        "inputs": "train.traced",
        "build": "train.build",
        "steps": "train.steps",
        "loop": "train.loop",
        "averaging": "train.averaging",
        "events": "train.events",
        "loggers": "train.loggers",
        "engine": "train.engine",
        "check": "train.check",
        "sweep": "experiments.sweep",
        "vectorize": "experiments.vectorize",
        "compare": "experiments.compare",
        "plot": "experiments.plot",
        "testing": "kit",
        "scaffold": "kit.scaffold",
    }.items()
}
REMOVED_IN = "0.3"


def target(name: str) -> str | None:
    """The module that ``name`` is another name for, or None."""
    return ALIASES.get(name) or MOVED.get(name)


class AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an alias as the module it names (last on ``sys.meta_path``: real modules win)."""

    def find_spec(self, fullname, path=None, target_=None):
        if target(fullname) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        new = target(spec.name)
        if spec.name in MOVED:
            warnings.warn(
                f"{spec.name} moved to {new} in jaxyard 0.2; the old path goes in {REMOVED_IN} (see CHANGELOG.md)",
                DeprecationWarning,
                stacklevel=_caller_level(),
            )
        module = importlib.import_module(new)
        self._spec = module.__spec__  # the import system sets the alias's spec on it; put it back
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning raised in :meth:`AliasFinder.create_module` at
    the line that imports. ``warnings`` does not count the import system's frozen frames; the
    Python-level ``importlib.import_module`` is a frame of its own, passed over too."""
    level = 1
    frame: types.FrameType | None = sys._getframe(2)  # the caller of create_module
    while frame is not None:
        name = frame.f_code.co_filename
        if not ("importlib" in name and "_bootstrap" in name):
            level += 1
            if not name.endswith(("importlib/__init__.py", "importlib\\__init__.py")):
                break
        frame = frame.f_back
    return level


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(AliasFinder())
