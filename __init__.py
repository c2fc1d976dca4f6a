"""jaxyard: a plugin-based training registry for JAX.

The public API lives here. Importing :mod:`jaxyard` is cheap: the engine (which imports jax,
flax and optax) loads on first use of :func:`train`, :func:`evaluate` or :func:`resume`.
"""

from jaxyard.core.config import RunConfig, resolve_config
from jaxyard.core.data import Dataset, Split, StreamingDataset
from jaxyard.core.entries import KINDS, Entry, PluginInfo
from jaxyard.core.errors import JaxyardError, PluginError, UnknownComponent, UsageError
from jaxyard.core.hookspecs import hookimpl
from jaxyard.core.params import param
from jaxyard.core.registry import Registry, build_registry
from jaxyard.core.settings import Settings, load_settings

__all__ = [
    "KINDS",
    "Dataset",
    "Entry",
    "JaxyardError",
    "PluginError",
    "PluginInfo",
    "Registry",
    "RunConfig",
    "Settings",
    "Split",
    "StreamingDataset",
    "UnknownComponent",
    "UsageError",
    "build_registry",
    "evaluate",
    "hookimpl",
    "load_settings",
    "param",
    "resolve_config",
    "resume",
    "train",
]

_ENGINE = ("train", "evaluate", "resume")


def __getattr__(name):
    if name in _ENGINE:
        from jaxyard.core import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'jaxyard' has no attribute {name!r}")
