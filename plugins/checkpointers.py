"""Built-in checkpointers: ``orbax`` (checkpoints on disk) and ``none`` (saves nothing).

Listing components imports this module, so it must stay light: no jax, orbax
or numpy here; the orbax implementation is imported when the factory is called.
"""

from __future__ import annotations

import pathlib
import typing

import attrs

from jaxyard import hookimpl
from jaxyard.core.checkpoint import CheckpointError, Restored
from jaxyard.core.params import param

if typing.TYPE_CHECKING:  # pragma: no cover
    from jaxyard.core.checkpoint import Checkpointer


@attrs.frozen
class OrbaxParams:
    keep_latest: int = param(3, "how many of the newest checkpoints to keep", validator=attrs.validators.ge(1))
    keep_best: int = param(
        1, "how many best checkpoints (by best_metric) to keep as well", validator=attrs.validators.ge(0)
    )
    best_metric: str = param("val_loss", "validation metric that ranks checkpoints")
    best_mode: str = param(
        "min",
        "'min' or 'max': whether a lower or higher best_metric is better",
        validator=attrs.validators.in_(("min", "max")),
    )
    async_save: bool = param(True, "save in the background so training does not wait on the disk")


def orbax(params: OrbaxParams, *, directory: pathlib.Path) -> "Checkpointer":
    """Orbax checkpoints on disk, with checksums, retention of latest K + best N, asynchronous saves.

    ``directory`` must be new, empty, or one this checkpointer wrote before
    (it holds a ``jaxyard-checkpoints.json`` marker); anything else is refused
    with a CheckpointError so another tool's files are never deleted.
    Every restore verifies a crc32 of each array; damaged checkpoints are
    passed over (``restore()``) or reported (``restore(step)``).
    """
    from jaxyard.plugins._orbax import OrbaxCheckpointer  # heavy import only when called

    return OrbaxCheckpointer(
        directory,
        keep_latest=params.keep_latest,
        keep_best=params.keep_best,
        best_metric=params.best_metric,
        best_mode=params.best_mode,
        async_save=params.async_save,
    )


@attrs.frozen
class NoneParams:
    """The ``none`` checkpointer takes no parameters."""


class NoneCheckpointer:
    """Saves nothing: ``steps()`` is always empty and ``restore`` raises CheckpointError."""

    def __init__(self, directory: pathlib.Path | None = None):
        self.directory = directory

    def __repr__(self) -> str:
        return "NoneCheckpointer()"

    def save(self, step: int, arrays: dict, meta: dict) -> None:
        return None

    def steps(self) -> list[int]:
        return []

    def restore(self, step: int | None = None, *, which: str = "latest") -> Restored:
        if which not in ("latest", "best"):
            raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
        raise CheckpointError(
            "the 'none' checkpointer saved no checkpoints; choose a checkpointer such as 'orbax' to resume",
            step=step,
        )

    def wait(self) -> None:
        return None

    def close(self) -> None:
        return None


def none(params: NoneParams, *, directory: pathlib.Path) -> "Checkpointer":
    """Saves nothing (no resuming); for quick experiments that do not need checkpoints."""
    return NoneCheckpointer(directory)


@hookimpl
def jaxyard_register_checkpointers(register):
    register("orbax", orbax, params=OrbaxParams)
    register("none", none, params=NoneParams)
