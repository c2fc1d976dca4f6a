"""Workarounds that reach into orbax's, absl's and CPython's private code, so that a failed
checkpoint operation is one :class:`CheckpointError` line and nothing else is printed.

Three of them, installed while at least one checkpointer has orbax open, from its first save or load
until it is closed (:class:`Quiet`):

- **orbax's log records are dropped** (a filter on the ``absl`` logger): absl prints whole
  tracebacks from orbax's background threads for failures the caller already gets as one line.
  ``JAXYARD_ORBAX_LOGS=1`` keeps them.
- **orbax's private ``asyncio_utils._run_sync_via_new_loop`` is swapped** for one that, when the
  coroutine fails, lets the reads and writes still in flight finish before it closes its event
  loop, and whose loop drops a late callback from tensorstore's threads (an operation given up
  when another failed) instead of raising "Event loop is closed" there; otherwise those
  tracebacks follow the error.

and one registered when this module is imported:

- **checkpointers still open at interpreter exit are closed** by a hook on CPython's private
  ``threading._register_atexit``, which runs before ``concurrent.futures`` shuts its thread pools
  down: a pending save finishes instead of printing "cannot schedule new futures after shutdown".

Each was written for the orbax releases in :data:`TESTED_ORBAX` (the range pyproject.toml pins) and
is tested with them. With any other orbax none is applied, and a :class:`CheckpointWarning` says so
once: orbax then logs as it likes, its own ``run_sync`` runs, and open checkpointers are closed by
a plain :mod:`atexit` hook (after the thread pools are gone, so a save still pending may fail with
orbax's own message). Checkpoints are saved, verified and loaded the same either way.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures.thread  # noqa: F401 - its exit hook must be registered before ours
import inspect
import logging
import os
import re
import threading
import weakref
from importlib import metadata
from typing import Any

from jaxyard.core.store.checkpoint import CheckpointError, warn_checkpoint

__all__ = ["ORBAX_VERSION", "TESTED_ORBAX", "Quiet", "close_at_exit", "forget", "open_checkpointers", "tested"]

#: The orbax-checkpoint releases these workarounds were written for: at least the first, below the second.
TESTED_ORBAX = ("0.11.20", "0.13")
_DRAIN_SECONDS = 30.0  # how long a failed run_sync waits for its other operations to finish


def _release(version: str | None) -> tuple[int, ...] | None:
    """``"0.12.8"`` -> ``(0, 12, 8)``; the leading numbers of a pre-release or local version."""
    m = re.match(r"\d+(?:\.\d+)*", version or "")
    return tuple(int(p) for p in m.group(0).split(".")) if m else None


def _installed_orbax() -> str | None:
    try:
        return metadata.version("orbax-checkpoint")
    except metadata.PackageNotFoundError:  # not installed as a distribution: unknown
        return None


#: The installed orbax-checkpoint release (None when its metadata cannot be found).
ORBAX_VERSION = _installed_orbax()


def tested(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed orbax) is one :data:`TESTED_ORBAX` covers."""
    release = _release(ORBAX_VERSION if version is None else version)
    low, high = (_release(v) for v in TESTED_ORBAX)
    return release is not None and low is not None and high is not None and low <= release < high


def _orbax_root() -> str:
    import orbax.checkpoint as ocp

    return os.path.dirname(os.path.dirname(os.path.abspath(ocp.__file__))) + os.sep  # .../orbax/


class _DropOrbaxRecords(logging.Filter):
    """Drops log records emitted from orbax's source files (absl logs them on the 'absl'
    logger with whole tracebacks, from background threads too); every failure they describe
    reaches the caller as one CheckpointError line."""

    def __init__(self) -> None:
        super().__init__()
        self._root = _orbax_root()

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.pathname).startswith(self._root)


class _Loop(asyncio.SelectorEventLoop):
    """An event loop that ignores a callback arriving from another thread after it closed.

    tensorstore completes an operation from its own threads by calling ``call_soon_threadsafe`` on
    the loop that awaited it; when that operation was given up (its asyncio future cancelled
    because another read or write failed) and the loop has since closed, the call would raise
    "Event loop is closed" in tensorstore's thread, where nobody can catch it. Nothing waits for
    that result any more, so dropping it is right."""

    def call_soon_threadsafe(self, callback, *args, context=None):
        try:
            return super().call_soon_threadsafe(callback, *args, context=context)
        except RuntimeError:
            if self.is_closed():
                return None
            raise


def _run_sync_draining(coro):
    """orbax's ``_run_sync_via_new_loop``, but when the coroutine fails, the tasks still
    running on the loop (reads and writes the failed one was gathered with) are given time
    to finish, then cancelled, before the loop closes: tensorstore completing one of them
    afterwards would call into the closed loop and print "Event loop is closed" tracebacks."""
    loop = _Loop()
    tasks: list[asyncio.Task] = []

    def track(loop, coro, **kwargs):
        task = asyncio.Task(coro, loop=loop, **kwargs)
        tasks.append(task)
        return task

    loop.set_task_factory(track)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    except BaseException:
        _drain(loop, tasks)
        raise
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _drain(loop: asyncio.AbstractEventLoop, tasks: list) -> None:
    try:
        pending = [t for t in tasks if not t.done()]
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=_DRAIN_SECONDS))
        stuck = [t for t in tasks if not t.done()]
        for t in stuck:
            t.cancel()
        if stuck:
            loop.run_until_complete(asyncio.wait(stuck, timeout=_DRAIN_SECONDS))
    except BaseException:  # the original failure is the one to report
        pass
    for t in tasks:  # their failures are part of the one reported: not "never retrieved"
        if t.done() and not t.cancelled():
            t.exception()


def _orbax_asyncio_utils():
    """orbax's private asyncio_utils module, if it has the one-argument ``_run_sync_via_new_loop``
    the swap replaces (None otherwise: orbax's own behaviour then)."""
    try:
        from orbax.checkpoint._src import asyncio_utils
    except ImportError:
        return None
    original = getattr(asyncio_utils, "_run_sync_via_new_loop", None)
    if original is _run_sync_draining:
        return asyncio_utils
    try:
        if not callable(original) or len(inspect.signature(original).parameters) != 1:
            return None
    except (TypeError, ValueError):
        return None
    return asyncio_utils


class Quiet:
    """Installed while at least one OrbaxCheckpointer is open in the process: the log filter on
    the 'absl' logger and the draining ``run_sync``. Removed when the last one closes. Nothing is
    installed for an orbax outside :data:`TESTED_ORBAX`."""

    _lock = threading.Lock()
    _users = 0
    _filter: _DropOrbaxRecords | None = None
    _saved_run_sync: Any = None
    _warned = False

    @classmethod
    def acquire(cls) -> None:
        with cls._lock:
            cls._users += 1
            if cls._users > 1:
                return
            if not tested():
                cls._warn_untested()
                return
            if os.environ.get("JAXYARD_ORBAX_LOGS", "") in ("", "0"):  # 1: keep orbax's logs (debugging)
                cls._filter = _DropOrbaxRecords()
                logging.getLogger("absl").addFilter(cls._filter)
            utils = _orbax_asyncio_utils()
            if utils is not None and utils._run_sync_via_new_loop is not _run_sync_draining:
                cls._saved_run_sync = utils._run_sync_via_new_loop
                utils._run_sync_via_new_loop = _run_sync_draining

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            if cls._users == 0:
                return
            cls._users -= 1
            if cls._users:
                return
            if cls._filter is not None:
                logging.getLogger("absl").removeFilter(cls._filter)
                cls._filter = None
            if cls._saved_run_sync is not None:
                utils = _orbax_asyncio_utils()
                if utils is not None and utils._run_sync_via_new_loop is _run_sync_draining:
                    utils._run_sync_via_new_loop = cls._saved_run_sync
                cls._saved_run_sync = None

    @classmethod
    def _warn_untested(cls) -> None:
        if cls._warned:
            return
        cls._warned = True
        low, high = TESTED_ORBAX
        warn_checkpoint(
            f"orbax-checkpoint {ORBAX_VERSION or '(version unknown)'} is not a release jaxyard was tested with "
            f"(>={low},<{high}): its workarounds for orbax's stray output are off; pip install 'orbax-checkpoint>={low},<{high}'"
        )


# ------------------------------------------------------------------ at exit

_OPEN: weakref.WeakSet[Any] = weakref.WeakSet()


def close_at_exit(checkpointer: Any) -> None:
    """Close ``checkpointer`` at interpreter exit if it is still open then (held weakly). A failure
    to close is its ``_warn`` note, since nothing else can report it."""
    _OPEN.add(checkpointer)


def forget(checkpointer: Any) -> None:
    """``checkpointer`` was closed: nothing to do for it at exit."""
    _OPEN.discard(checkpointer)


def open_checkpointers() -> list[Any]:
    """The checkpointers :func:`close_at_exit` would close now."""
    return list(_OPEN)


def _close_open_checkpointers() -> None:
    """Close checkpointers left open (an error on its way out of a program that never closed
    them): a pending save finishes now, while Python's thread pools still take work."""
    for ckpt in list(_OPEN):
        try:
            ckpt.close()
        except CheckpointError as err:
            ckpt._warn(f"at exit: {err}")
        except Exception:  # nothing useful to print at exit
            pass


def _register_exit_hook() -> None:
    register = getattr(threading, "_register_atexit", None)
    if tested() and callable(register):
        try:  # runs before concurrent.futures' own exit hook (registered earlier, run later)
            register(_close_open_checkpointers)
            return
        except RuntimeError:  # pragma: no cover - the interpreter is already shutting down
            pass
    atexit.register(_close_open_checkpointers)


_register_exit_hook()
