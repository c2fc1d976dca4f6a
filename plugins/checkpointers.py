"""Built-in checkpointers: ``orbax`` (checkpoints on disk) and ``none`` (saves nothing).

Listing components imports this module, so it must stay light: no jax, orbax
or numpy here; the orbax implementation is imported when the factory is called.
"""

from __future__ import annotations

import pathlib
import sys
import typing

import attrs

from jaxyard import hookimpl
from jaxyard.core.registry.params import param
from jaxyard.core.store.checkpoint import CheckpointError, Restored, warn_checkpoint

if typing.TYPE_CHECKING:  # pragma: no cover
    from jaxyard.core.store.checkpoint import Checkpointer


@attrs.frozen
class OrbaxParams:
    async_save: bool = param(True, "save in the background so training does not wait on the disk")


def orbax(params: OrbaxParams, *, directory: pathlib.Path) -> Checkpointer:
    """Orbax checkpoints on disk, with checksums, durable and optionally asynchronous saves.

    Storage only: it keeps every step until jaxyard's retention deletes one (the run's
    ``keep_latest`` and ``keep_best`` settings), and jaxyard picks the latest or best
    intact step from it. ``directory`` must be new, empty, or one this checkpointer
    wrote before (it holds a ``jaxyard-checkpoints.json`` marker); anything else is
    refused with a CheckpointError so another tool's files are never deleted. Every
    load verifies a crc32 of each array, of the saved ``meta`` and of the checksum record,
    and that the step directory holds the step it is named after; the cause of any damage is
    named. A failed save is one line naming the cause (``No space left on device (ENOSPC)``),
    with nothing printed by orbax. What it worked around (a damaged step moved aside when its
    step is saved again, an unreadable marker) is a :class:`jaxyard.CheckpointWarning` on stderr.
    Opening and loading never change the directory, so a run can be evaluated while it trains.
    """
    from jaxyard.plugins._orbax import OrbaxCheckpointer  # heavy import only when called

    return OrbaxCheckpointer(directory, async_save=params.async_save, warn=warn_checkpoint)


@attrs.frozen
class NoneParams:
    """The ``none`` checkpointer takes no parameters."""


class NoneCheckpointer:
    """Saves nothing: ``steps()`` is always empty and ``load`` raises CheckpointError."""

    def __init__(self, directory: pathlib.Path | None = None):
        self.directory = directory

    def __repr__(self) -> str:
        return "NoneCheckpointer()"

    def save(self, step: int, arrays: dict, meta: dict) -> None:
        return None

    def steps(self) -> list[int]:
        return []

    def load(self, step: int) -> Restored:
        raise CheckpointError(
            "the 'none' checkpointer saved no checkpoints; choose a checkpointer such as 'orbax' to resume",
            step=step,
        )

    def delete(self, step: int) -> None:
        return None

    def wait(self) -> None:
        return None

    def close(self) -> None:
        return None


def none(params: NoneParams, *, directory: pathlib.Path) -> Checkpointer:
    """Saves nothing (no resuming, no ``eval`` of a checkpoint); for quick experiments.

    The directory is never created."""
    return NoneCheckpointer(directory)


@hookimpl
def jaxyard_on_epoch_end(run):
    """A run on the orbax checkpointer imports orbax in the background once its first epoch is done:
    the next epochs' steps leave a core idle, and the first save then finds it imported."""
    choice = getattr(run.config, "checkpointer", None)
    saves = run.is_main_process  # (process 0 of a job saves)
    if saves and getattr(getattr(choice, "entry", None), "factory", None) is orbax and "orbax.checkpoint" not in sys.modules:
        from jaxyard.plugins._orbax.adapter import prefetch

        prefetch()


@hookimpl
def jaxyard_register_checkpointers(register):
    register("orbax", orbax, params=OrbaxParams)
    register("none", none, params=NoneParams)
