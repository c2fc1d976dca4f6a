"""jaxyard: a plugin-based training registry for JAX.

The public API lives here. Importing :mod:`jaxyard` is cheap: the engine (which imports jax,
flax and optax) loads on first use of :func:`train`, :func:`evaluate` or :func:`resume`.
"""

from typing import TYPE_CHECKING

from jaxyard.core import moved
from jaxyard.core.errors import JaxyardError, PluginError, TrainingError, UnknownComponent, UsageError
from jaxyard.core.registry.config import RunConfig, resolve_config
from jaxyard.core.registry.entries import KINDS, Entry, PluginInfo
from jaxyard.core.registry.hookspecs import hookimpl
from jaxyard.core.registry.loading import Registry, build_registry
from jaxyard.core.registry.params import param
from jaxyard.core.registry.settings import Settings, load_settings
from jaxyard.core.store.checkpoint import Checkpointer, CheckpointError, CheckpointMismatch, CheckpointWarning, Restored
from jaxyard.core.store.integrity import checksum_record, verify_checksums
from jaxyard.core.store.policy import CheckpointPolicy, Monitor
from jaxyard.core.task import Task
from jaxyard.core.train.data import Dataset, Split, StreamingDataset
from jaxyard.core.train.events import Run, RunResult
from jaxyard.core.train.loggers import Logger, MissingExtra
from jaxyard.core.train.traced import Programs

moved.install()  # jaxyard.testing, and 0.1's module paths (they warn)

if TYPE_CHECKING:  # pragma: no cover - the engine imports jax: loaded on first use
    from jaxyard.core.train.check import check
    from jaxyard.core.train.engine import Evaluation, evaluate, resume, train

__all__ = [
    "__version__",
    "KINDS",
    "CheckpointError",
    "CheckpointMismatch",
    "CheckpointPolicy",
    "CheckpointWarning",
    "Checkpointer",
    "Dataset",
    "Entry",
    "Evaluation",
    "JaxyardError",
    "Logger",
    "MissingExtra",
    "Monitor",
    "PluginError",
    "PluginInfo",
    "Programs",
    "Registry",
    "Restored",
    "Run",
    "RunConfig",
    "RunResult",
    "Settings",
    "Split",
    "StreamingDataset",
    "Task",
    "TrainingError",
    "UnknownComponent",
    "UsageError",
    "build_registry",
    "check",
    "checksum_record",
    "evaluate",
    "hookimpl",
    "load_settings",
    "param",
    "resolve_config",
    "resume",
    "train",
    "verify_checksums",
]

_ENGINE = ("train", "evaluate", "resume", "Evaluation")


def __getattr__(name):
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("jaxyard")
        except PackageNotFoundError:  # a checkout that was never installed
            return "0+unknown"
    if name in _ENGINE:
        from jaxyard.core.train import engine

        return getattr(engine, name)
    if name == "check":
        from jaxyard.core.train.check import check

        return check
    raise AttributeError(f"module 'jaxyard' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
