"""The checkpointer interface the training engine calls, its errors and helpers.

A *checkpointer* saves the engine's state at a training step and restores it
later. The engine hands it a **flat** dict of arrays keyed by dotted path
strings plus a JSON-serializable ``meta`` dict; it gets back a
:class:`Restored`. Third-party checkpointers implement :class:`Checkpointer`
(a :class:`typing.Protocol`: no base class needed) and register a factory
through the ``jaxyard_register_checkpointers`` hook.

This module is imported when components are listed, so it imports neither
jax, orbax nor numpy.
"""

from __future__ import annotations

import typing
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs

from jaxyard.core.errors import JaxyardError, one_line

if typing.TYPE_CHECKING:  # pragma: no cover - for annotations only
    import numpy

__all__ = [
    "CheckpointError",
    "CheckpointMismatch",
    "CheckpointWarning",
    "Checkpointer",
    "Restored",
    "compare_structures",
    "missing_methods",
    "describe_exception",
    "structure_of",
    "warn_checkpoint",
]

#: ``(shape, dtype)`` of one array; dtype may be a numpy dtype or its name.
Spec = tuple[tuple[int, ...], Any]

_MAX_CAUSE_CHARS = 400


def describe_exception(exc: BaseException) -> str:
    """One line naming an exception and the first line of its message (orbax and tensorstore like
    to embed JSON specs), cut at a few hundred characters; never a traceback."""
    return one_line(exc, _MAX_CAUSE_CHARS, first_line=True)


class CheckpointError(JaxyardError):
    """A checkpoint could not be saved or restored.

    The message is a single line naming where (directory, step) and why::

        CheckpointError("checksum mismatch", directory="/runs/a/checkpoints", step=300)
        # -> "checkpoint step 300 in /runs/a/checkpoints: checksum mismatch"

    ``cause``, ``directory`` and ``step`` stay available as attributes.
    """

    def __init__(self, cause: str, *, directory: Any = None, step: int | None = None):
        self.cause = one_line(str(cause), 2000)
        self.directory = None if directory is None else str(directory)
        self.step = step
        super().__init__(self._message())

    def _message(self) -> str:
        if self.step is not None and self.directory is not None:
            where = f"checkpoint step {self.step} in {self.directory}"
        elif self.step is not None:
            where = f"checkpoint step {self.step}"
        elif self.directory is not None:
            where = f"checkpoint directory {self.directory}"
        else:
            return self.cause
        return f"{where}: {self.cause}"


class CheckpointWarning(UserWarning):
    """A note from a checkpointer about something it worked around (a damaged step moved aside, an
    unreadable marker file); issued through :mod:`warnings`, so it reaches stderr unless filtered:
    ``warnings.filterwarnings("ignore", category=jaxyard.CheckpointWarning)`` silences it."""


def warn_checkpoint(message: str) -> None:
    """Issue ``message`` as a :class:`CheckpointWarning` (a checkpointer's default ``warn``)."""
    warnings.warn(message, CheckpointWarning, stacklevel=2)


class CheckpointMismatch(CheckpointError):
    """The arrays in a checkpoint do not match the structure the engine expects.

    Build it from :func:`compare_structures`' output; ``differences`` keeps the
    full list, the message shows the first few::

        diffs = compare_structures(expected, structure_of(restored.arrays))
        if diffs:
            raise CheckpointMismatch(diffs, directory=ckpt_dir, step=restored.step)
    """

    _SHOWN = 5

    def __init__(
        self,
        differences: Sequence[str],
        *,
        directory: Any = None,
        step: int | None = None,
    ):
        self.differences = tuple(differences)
        n = len(self.differences)
        shown = "; ".join(self.differences[: self._SHOWN])
        more = f"; and {n - self._SHOWN} more" if n > self._SHOWN else ""
        noun = "difference" if n == 1 else "differences"
        super().__init__(
            f"saved arrays do not match the expected structure ({n} {noun}): {shown}{more}",
            directory=directory,
            step=step,
        )


def _dtype_name(dtype: Any) -> str:
    name = getattr(dtype, "name", None)  # numpy dtype (also ml_dtypes' bfloat16)
    if isinstance(name, str):
        return name
    if isinstance(dtype, type):  # e.g. numpy.float32, jnp.float32
        return getattr(dtype, "__name__", str(dtype))
    return str(dtype)


def _shape_text(shape: Sequence[int]) -> str:
    shape = tuple(int(d) for d in shape)
    return str(shape)


def compare_structures(
    expected: Mapping[str, Spec],
    saved: Mapping[str, Spec],
) -> list[str]:
    """Human-readable differences between two ``{path: (shape, dtype)}`` maps.

    Returns an empty list when they match. Messages, in path order::

        missing in checkpoint: model.layers.2.kernel (128, 10)
        unexpected in checkpoint: model.layers.3.bias (10,)
        shape differs: model.layers.0.kernel saved (784, 256) vs expected (784, 512)
        dtype differs: model.layers.0.kernel saved float16 vs expected float32

    Dtypes compare by name, so ``numpy.dtype("float32")``, ``numpy.float32``,
    ``jnp.float32`` and ``"float32"`` are all equal.
    """
    out: list[str] = []
    for path in sorted(set(expected) | set(saved)):
        if path not in saved:
            shape, _ = expected[path]
            out.append(f"missing in checkpoint: {path} {_shape_text(shape)}")
            continue
        if path not in expected:
            shape, _ = saved[path]
            out.append(f"unexpected in checkpoint: {path} {_shape_text(shape)}")
            continue
        (e_shape, e_dtype), (s_shape, s_dtype) = expected[path], saved[path]
        if tuple(int(d) for d in e_shape) != tuple(int(d) for d in s_shape):
            out.append(
                f"shape differs: {path} saved {_shape_text(s_shape)} vs expected {_shape_text(e_shape)}"
            )
        if _dtype_name(e_dtype) != _dtype_name(s_dtype):
            out.append(
                f"dtype differs: {path} saved {_dtype_name(s_dtype)} vs expected {_dtype_name(e_dtype)}"
            )
    return out


def structure_of(arrays: Mapping[str, Any]) -> dict[str, Spec]:
    """``{path: (shape, dtype)}`` of a flat dict of arrays (anything with
    ``.shape`` and ``.dtype``: numpy arrays, jax arrays, ShapeDtypeStructs)."""
    return {k: (tuple(int(d) for d in v.shape), v.dtype) for k, v in arrays.items()}


@attrs.frozen
class Restored:
    """What :meth:`Checkpointer.load` and :meth:`CheckpointPolicy.restore` return.

    - ``step``: the training step of the restored checkpoint.
    - ``arrays``: the flat ``{dotted path: numpy.ndarray}`` dict as saved (host
      arrays; the engine puts them on devices).
    - ``meta``: the JSON ``meta`` dict as saved.
    - ``skipped``: ``(step, cause)`` for each damaged checkpoint that was passed
      over to get here (newest first); empty when the first choice was intact.
    """

    step: int
    arrays: dict[str, numpy.ndarray]
    meta: dict
    skipped: tuple[tuple[int, str], ...] = ()


@typing.runtime_checkable
class Checkpointer(Protocol):
    """Stores training state by step: storage only. The reference for checkpointer authors.

    A factory registered with ``register(name, factory, params=ParamsClass)`` is called as
    ``factory(params, *, directory=pathlib.Path)`` and returns an object with these six
    methods (no base class needed). ``directory`` belongs to the checkpointer alone.

    What is *not* the checkpointer's business: which step is the latest intact one, which
    is best by the run's ``monitor`` metric, how many to keep, passing over damaged steps.
    jaxyard decides those in one place (:class:`jaxyard.core.store.policy.CheckpointPolicy`) for
    every checkpointer, from ``steps``, ``load`` and ``delete``.

    Every failure is a :class:`CheckpointError` with a one-line message naming the
    directory, the step and the cause; a failed save never deletes a step already saved.

    In a job of several processes, process 0 alone creates and calls the checkpointer, with the
    whole state gathered to its host arrays; what it restores is broadcast to the others. A
    checkpointer writes as if it were the only process (orbax's is told so).
    """

    def save(self, step: int, arrays: dict[str, numpy.ndarray], meta: dict) -> None:
        """Save the state at ``step`` (may return before the data is on disk).

        ``arrays`` is a FLAT dict from dotted path strings to host (NumPy) arrays, e.g.
        ``"model.layers.0.kernel"``, ``"optimizer.opt_state.0.mu.layers.0.kernel"``,
        ``"rng.dropout.key"``, of plain numeric dtypes (RNG keys arrive as uint32 key data).
        They are the checkpointer's own copies: the engine does not touch them again.

        ``meta`` is JSON-serializable: ``{"epoch": int, "step": int, "metrics": {...},
        "history": [...]}``. Give it back unchanged from :meth:`load`.

        May be asynchronous: an error of a background save is raised as
        :class:`CheckpointError` by the next ``save``, ``wait`` or ``close``. Saving a
        step that already holds an intact checkpoint raises :class:`CheckpointError`.
        """
        ...

    def steps(self) -> list[int]:
        """Steps of the finished checkpoints present, ascending.

        A save still in progress is not listed; a damaged checkpoint is listed (damage is
        found by :meth:`load`).
        """
        ...

    def load(self, step: int) -> Restored:
        """Load exactly ``step``, verified as far as the storage can (``skipped`` empty).

        Raises :class:`CheckpointError` naming the cause when the step is missing or damaged.
        Waits for a pending save of that step first.
        """
        ...

    def delete(self, step: int) -> None:
        """Remove ``step`` (retention calls it only for committed steps, never the newest)."""
        ...

    def wait(self) -> None:
        """Block until pending saves are finished and durable.

        Raises :class:`CheckpointError` if a pending save failed.
        """
        ...

    def close(self) -> None:
        """Finish pending saves (as :meth:`wait`) and release resources.

        Idempotent. Raises :class:`CheckpointError` if the last pending save failed
        (resources are released regardless).
        """
        ...


CHECKPOINTER_METHODS = ("save", "steps", "load", "delete", "wait", "close")


def missing_methods(obj: Any) -> list[str]:
    """The :class:`Checkpointer` methods ``obj`` lacks (empty when it conforms)."""
    return [m for m in CHECKPOINTER_METHODS if not callable(getattr(obj, m, None))]
