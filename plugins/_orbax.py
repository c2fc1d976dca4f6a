"""Orbax-backed checkpointer: storage only, with checksums, durable and asynchronous saves.

Layout of ``directory``::

    jaxyard-checkpoints.json      marker: this directory belongs to this checkpointer
    <step>/                       one finished orbax checkpoint per step
        state/                    the arrays (orbax StandardSave of a flat dict of numpy arrays)
        meta/metadata             the engine's ``meta`` dict (JSON)
        checksums/metadata        shape, dtype and crc32 of every array (JSON)
        _CHECKPOINT_METADATA      orbax bookkeeping
    <step>.orbax-checkpoint-tmp*  a save in progress (orbax renames it to <step> when done)
    <step>.damaged                a damaged checkpoint moved aside because the step was saved again

Storage only: which step is the latest intact one, which is best, how many to keep and passing
over damaged steps are decided by :class:`jaxyard.core.store.policy.CheckpointPolicy` for every
checkpointer. Orbax keeps every step it saves; a step goes away only through :meth:`delete`.
(Steps written by earlier versions may also hold a ``metrics/`` item; it is never read.)

Orbax writes every step into a temporary directory and renames it when all
items are committed, so a kill mid-save never leaves a half-written ``<step>``;
the checksum record is one of the items of that same atomic step, so it exists
exactly when the arrays do.

Readers never change the directory: ``jaxyard eval RUN`` may open it while RUN
is still training, and a ``*.orbax-checkpoint-tmp*`` directory may be that
run's save in progress. Opening, :meth:`steps` and :meth:`load` only read;
leftovers of killed saves are removed by the first :meth:`save` of a process
(the writer), and a new directory is created and marked when opened.

Damage detection on load: each item is restored separately (so the cause
names the item); any orbax/tensorstore/JSON error is a cause; then every array's
shape, dtype and crc32 are checked against the checksum record -- this catches
flipped bytes inside array data, which orbax itself reads back silently. The
record (version 2) also holds the step number, a crc32 of ``meta`` (as canonical
JSON) and a crc32 of itself, so an edited ``meta`` value or a step directory
renamed to another step's number is damage too. Version 1 records (no step, no
meta checksum) still load.

Quiet failures: every failure is one :class:`CheckpointError` line. While a
checkpointer is open, orbax's own log records (absl, which prints whole tracebacks
from its background threads) are dropped (``JAXYARD_ORBAX_LOGS=1`` keeps them), and
orbax's ``run_sync`` lets the operations still in flight finish before it closes
its event loop when one of them fails (otherwise tensorstore calls back into the
closed loop and "Event loop is closed" tracebacks follow the error). Checkpointers
still open when the interpreter exits are closed before Python's thread pools shut
down, so a pending save finishes instead of printing "cannot schedule new futures
after shutdown".
"""

from __future__ import annotations

import asyncio
import concurrent.futures.thread  # noqa: F401 - its exit hook must be registered before ours
import errno
import json
import logging
import operator
import os
import pathlib
import re
import shutil
import threading
import weakref
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np
import orbax.checkpoint as ocp

from jaxyard.core.store.checkpoint import CheckpointError, Restored, describe_exception
from jaxyard.core.store.rundir import write_atomic

MARKER_NAME = "jaxyard-checkpoints.json"
MARKER_FORMAT = "jaxyard.orbax"
FORMAT_VERSION = 1  # of the directory (marker); unchanged by checksum record version 2
RECORD_VERSION = 2  # of the checksum record: adds step, meta_crc32 and record_crc32
CHECKSUM_ALGORITHM = "crc32"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's name for a step directory being written

_STATE = "state"
_META = "meta"
_SUMS = "checksums"


def _no_warn(message: str) -> None:
    return None


class _Damaged(Exception):
    """A checkpoint failed verification; ``cause`` is one line."""

    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


@attrs.frozen
class _Entry:
    shape: tuple[int, ...]
    dtype: str
    crc32: int
    stored: bool  # False for zero-size arrays, which orbax cannot save


def _as_step(step: Any) -> int:
    if isinstance(step, bool):
        raise CheckpointError(f"step must be an integer, got {step!r}")
    try:
        value = operator.index(step)
    except TypeError:
        raise CheckpointError(f"step must be an integer, got {step!r}") from None
    if value < 0:
        raise CheckpointError(f"step must be >= 0, got {value}")
    return value


def _is_step_name(name: str) -> bool:
    return name.isdigit() and name.isascii() and str(int(name)) == name


def _is_tmp_name(name: str) -> bool:
    """``<step>.orbax-checkpoint-tmp[-<timestamp>]``: a step directory orbax has not finished."""
    head, sep, _ = name.partition(TMP_SUFFIX)
    return bool(sep) and _is_step_name(head)


def _crc32(a: np.ndarray) -> int:
    flat = np.ascontiguousarray(a).reshape(-1)
    return zlib.crc32(flat.view(np.uint8)) & 0xFFFFFFFF


def _canonical_json(obj: Any) -> bytes:
    """The one byte string a JSON value stands for (key order and spacing fixed)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True).encode()


def _json_crc32(obj: Any) -> int:
    return zlib.crc32(_canonical_json(obj)) & 0xFFFFFFFF


def _checksum_record(step: int, host: Mapping[str, np.ndarray], meta: dict) -> dict:
    """The ``checksums`` item: the step, a crc32 of ``meta``, shape, dtype and crc32 of every
    array (zero-size ones included), and a crc32 of the record itself."""
    entries = {
        key: {
            "shape": list(a.shape),
            "dtype": a.dtype.name,
            CHECKSUM_ALGORITHM: _crc32(a),
            "stored": bool(a.size > 0),
        }
        for key, a in host.items()
    }
    record = {
        "format": MARKER_FORMAT,
        "version": RECORD_VERSION,
        "algorithm": CHECKSUM_ALGORITHM,
        "step": step,
        "meta_crc32": _json_crc32(meta),
        "arrays": entries,
    }
    record["record_crc32"] = _json_crc32(record)
    return record


def _dtype_from_name(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes  # bfloat16, float8_*: installed with jax

        return np.dtype(getattr(ml_dtypes, name))


def _json_default(obj: Any) -> Any:
    # numpy / jax scalars and small arrays sneaking into meta
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def _write_json_atomic(path: pathlib.Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True))  # jaxyard's one durable write


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: pathlib.Path) -> None:
    """fsync every file and directory under ``root`` (orbax's JSON items are not
    fsynced by orbax itself)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(pathlib.Path(dirpath))


# ------------------------------------------------------------------ quiet orbax

_ORBAX_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(ocp.__file__))) + os.sep  # .../orbax/
_DRAIN_SECONDS = 30.0  # how long a failed run_sync waits for its other operations to finish


class _DropOrbaxRecords(logging.Filter):
    """Drops log records emitted from orbax's source files (absl logs them on the 'absl'
    logger with whole tracebacks, from background threads too); every failure they describe
    reaches the caller as one CheckpointError line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.pathname).startswith(_ORBAX_ROOT)


def _run_sync_draining(coro):
    """orbax's ``_run_sync_via_new_loop``, but when the coroutine fails, the tasks still
    running on the loop (reads and writes the failed one was gathered with) are given time
    to finish, then cancelled, before the loop closes: tensorstore completing one of them
    afterwards would call into the closed loop and print "Event loop is closed" tracebacks."""
    loop = asyncio.new_event_loop()
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


class _Quiet:
    """Installed while at least one OrbaxCheckpointer is open in the process: the log filter
    on the 'absl' logger and the draining ``run_sync``. Removed when the last one closes."""

    _lock = threading.Lock()
    _users = 0
    _filter = _DropOrbaxRecords()
    _saved_run_sync: Any = None

    @classmethod
    def acquire(cls) -> None:
        with cls._lock:
            cls._users += 1
            if cls._users > 1:
                return
            if os.environ.get("JAXYARD_ORBAX_LOGS", "") in ("", "0"):  # 1: keep orbax's logs (debugging)
                logging.getLogger("absl").addFilter(cls._filter)
            utils = _orbax_asyncio_utils()
            if utils is not None and callable(getattr(utils, "_run_sync_via_new_loop", None)):
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
            logging.getLogger("absl").removeFilter(cls._filter)
            utils = _orbax_asyncio_utils()
            if cls._saved_run_sync is not None and utils is not None:
                if getattr(utils, "_run_sync_via_new_loop", None) is _run_sync_draining:
                    utils._run_sync_via_new_loop = cls._saved_run_sync
                cls._saved_run_sync = None


def _orbax_asyncio_utils():
    try:
        from orbax.checkpoint._src import asyncio_utils
    except ImportError:  # another orbax layout: its own behaviour then
        return None
    return asyncio_utils


_OPEN: weakref.WeakSet[OrbaxCheckpointer] = weakref.WeakSet()


def _close_at_exit() -> None:
    """Close checkpointers left open (an error on its way out of a program that never closed
    them): a pending save finishes now, while Python's thread pools still take work."""
    for ckpt in list(_OPEN):
        try:
            ckpt.close()
        except CheckpointError as err:
            ckpt._warn(f"at exit: {err}")
        except Exception:  # nothing useful to print at exit
            pass


try:  # runs before concurrent.futures' own exit hook (registered earlier, run later)
    threading._register_atexit(_close_at_exit)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # pragma: no cover - another Python
    import atexit

    atexit.register(_close_at_exit)


# ------------------------------------------------------------ save failures

_ERRNO_IN_TEXT = re.compile(r"os_error_code='?(\d+)|\[Errno (\d+)\]")
_KNOWN_ERRNOS = tuple(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EIO", "EACCES", "EPERM") if hasattr(errno, name)
)


def _os_error_in(exc: BaseException) -> tuple[int, str | None] | None:
    """The errno of the operating-system error at the root of an orbax/tensorstore failure:
    an OSError anywhere in the chain (``__cause__``, ``__context__``, exception groups), or
    the ``os_error_code`` / ``[Errno N]`` tensorstore writes into its messages, or the
    text of a known error (``No space left on device``). Returns the errno and, for an
    OSError, the file it names."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    texts: list[str] = []
    while queue:
        e = queue.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and isinstance(e.errno, int) and e.errno > 0:
            return e.errno, (None if e.filename is None else os.fsdecode(e.filename))
        text = str(e)
        m = _ERRNO_IN_TEXT.search(text)
        if m:
            return int(m.group(1) or m.group(2)), None
        texts.append(text)
        queue.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        queue.extend(x for x in (getattr(e, "exceptions", None) or ()) if isinstance(x, BaseException))
    for code in _KNOWN_ERRNOS:
        if any(os.strerror(code) in t for t in texts):
            return code, None
    return None


def _save_cause(exc: BaseException) -> str:
    """One short cause for a failed save: ``No space left on device (ENOSPC)`` when the
    operating system said so, else orbax's message."""
    found = _os_error_in(exc)
    if found is None:
        return describe_exception(exc)
    code, filename = found
    cause = f"{os.strerror(code)} ({errno.errorcode.get(code, f'errno {code}')})"
    return f"{cause}: {filename}" if filename else cause


class OrbaxCheckpointer:
    """Checkpointer on orbax's CheckpointManager; see the module docstring.

    Implements :class:`jaxyard.core.store.checkpoint.Checkpointer`: ``save``, ``steps``,
    ``load(step)``, ``delete(step)``, ``wait``, ``close``. It ranks and retains
    nothing; wrap it in :class:`jaxyard.core.store.policy.CheckpointPolicy` for that.

    ``warn`` receives one-line notes about things it worked around (a damaged step
    moved aside, an unreadable marker); by default they are dropped, since jaxyard
    reports through one output channel that the caller owns.
    """

    def __init__(
        self,
        directory: os.PathLike | str,
        *,
        async_save: bool = True,
        warn: Callable[[str], None] | None = None,
    ):
        self._dir = pathlib.Path(os.path.abspath(os.fspath(directory)))
        self.async_save = bool(async_save)
        self._warn = warn or _no_warn
        self._pending: int | None = None  # step of a save not yet settled
        self._synced: set[int] = set()  # steps whose files were fsynced before publication
        self._deferred: CheckpointError | None = None  # failure seen by load()/delete()
        self._writer = False  # set by the first save(): leftovers cleaned, marker written
        self._closed = False

        self._claim_directory()
        options = ocp.CheckpointManagerOptions(
            # Keep every step: retention is CheckpointPolicy's, through delete().
            max_to_keep=None,
            enable_async_checkpointing=self.async_save,
            # Create the step's temporary directory inside save(), not in the
            # background: if that fails (unwritable directory) in the background,
            # orbax 0.12.8 leaves its writer threads waiting for a "directory
            # created" signal that never comes, and the process hangs for 5
            # minutes at exit. Synchronously, save() simply raises.
            async_options=ocp.options.AsyncOptions(
                create_directories_asynchronously=False,
                # runs in orbax's background thread after all items are written
                # and before the temporary directory is renamed into place
                post_finalization_callback=self._sync_before_publish if self.async_save else None,
            ),
            # Opening must not change the directory: a temporary directory may be the
            # save in progress of another live process. save() removes leftovers itself.
            cleanup_tmp_directories=False,
            create=False,  # _claim_directory() made it
            # Do not read every step's metadata when opening: it is not used, and
            # steps written by earlier versions hold a metrics file that orbax
            # refuses to open the directory over when it is damaged.
            lightweight_initialize=True,
            # In a job of several processes, one writes checkpoints (jaxyard gathers the state to its
            # host arrays first): orbax must not wait for the others at its barriers.
            multiprocessing_options=_this_process_alone(),
        )
        _Quiet.acquire()  # released by close(), or when this object is collected unclosed
        self._unquiet = weakref.finalize(self, _Quiet.release)
        try:
            self._mgr = ocp.CheckpointManager(self._dir, options=options, item_names=(_STATE, _META, _SUMS))
        except Exception as exc:
            self._closed = True
            self._release_quiet()
            raise CheckpointError(f"cannot open checkpoints: {describe_exception(exc)}", directory=self._dir) from exc
        _OPEN.add(self)

    # ------------------------------------------------------------------ public

    @property
    def directory(self) -> pathlib.Path:
        return self._dir

    def __repr__(self) -> str:
        return f"OrbaxCheckpointer({str(self._dir)!r}, async_save={self.async_save})"

    def save(self, step: int, arrays: Mapping[str, Any], meta: dict) -> None:
        """Save ``arrays`` and ``meta`` as checkpoint ``step``.

        Copies the arrays to host memory and computes their checksums before
        returning; with ``async_save`` the disk writes happen in the
        background. See :meth:`jaxyard.core.store.checkpoint.Checkpointer.save`.
        """
        self._check_open()
        step = _as_step(step)
        self._report_earlier_failure(step)
        meta_doc = self._normalize_meta(step, meta)
        host = self._to_host(step, arrays)
        sums_doc = _checksum_record(step, host, meta_doc)
        stored = {k: a for k, a in host.items() if a.size > 0}

        self._become_writer(step)
        self._make_room(step)
        items: dict[str, Any] = {_META: ocp.args.JsonSave(meta_doc), _SUMS: ocp.args.JsonSave(sums_doc)}
        if stored:
            items[_STATE] = ocp.args.StandardSave(stored)
        self._sync_step_list()
        try:
            # force=True: without it orbax silently skips (returns False) when a
            # save is still in progress or step <= latest step.
            self._pending = step
            self._mgr.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as exc:
            raise self._save_failed(step, exc) from exc
        if not self.async_save:
            self._settle()

    def steps(self) -> list[int]:
        """Finished checkpoints on disk, ascending (damaged ones included)."""
        try:
            names = os.listdir(self._dir)
        except OSError as exc:
            raise CheckpointError(f"cannot list checkpoints: {describe_exception(exc)}", directory=self._dir) from exc
        return sorted(int(n) for n in names if _is_step_name(n) and (self._dir / n).is_dir())

    def load(self, step: int) -> Restored:
        """Load exactly ``step``, verified against its checksum record; reads only.

        See :meth:`jaxyard.core.store.checkpoint.Checkpointer.load`. A missing or damaged
        step raises :class:`CheckpointError` naming the cause; ``skipped`` is empty.
        """
        self._check_open()
        step = _as_step(step)
        self._settle_or_defer()
        on_disk = self.steps()
        if step not in on_disk:
            raise CheckpointError(
                f"no such checkpoint (steps on disk: {_steps_text(on_disk)})", directory=self._dir, step=step
            )
        try:
            return self._load(step)
        except _Damaged as d:
            raise CheckpointError(d.cause, directory=self._dir, step=step) from None

    def delete(self, step: int) -> None:
        """Remove ``step`` through orbax; a step that is not there is left alone.

        A pending save of ``step`` is finished first, so the step is really gone.
        """
        self._check_open()
        step = _as_step(step)
        if self._pending == step:
            self._settle_or_defer()
        path = self._dir / str(step)
        if not path.is_dir():
            return
        self._sync_step_list()
        try:
            self._mgr.delete(step)
        except Exception as exc:
            raise CheckpointError(f"could not delete: {describe_exception(exc)}", directory=self._dir, step=step) from exc
        if path.exists():
            raise CheckpointError("could not delete: the step directory is still there", directory=self._dir, step=step)

    def wait(self) -> None:
        """Block until pending saves are committed and fsynced."""
        if self._closed:
            return
        if self._deferred is not None:
            err, self._deferred = self._deferred, None
            raise err
        self._settle()

    def close(self) -> None:
        """Finish pending saves and release orbax's threads. Idempotent."""
        if self._closed:
            return
        error: CheckpointError | None = None
        try:
            self.wait()
        except CheckpointError as err:
            error = err
        finally:
            self._closed = True
            _OPEN.discard(self)
            try:
                failure = self._shut_down_orbax()
                if failure is not None and error is None:
                    error = CheckpointError(f"closing failed: {describe_exception(failure)}", directory=self._dir)
            finally:
                self._release_quiet()
        if error is not None:
            raise error

    def __enter__(self) -> OrbaxCheckpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---------------------------------------------------------------- internals

    def _shut_down_orbax(self) -> Exception | None:
        """Close orbax's manager (its threads, executors and metadata stores). When its
        close() stops early (it re-raises a failed background save first), close the parts
        it skipped, so that no orbax thread is left to print at interpreter exit."""
        try:
            self._mgr.close()
            return None
        except Exception as exc:
            failure = exc
        for part in ("_checkpointer", "_non_blocking_metadata_store", "_blocking_metadata_store", "_checkpoint_deleter"):
            close = getattr(getattr(self._mgr, part, None), "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # the first failure is the one reported
                    pass
        return failure

    def _release_quiet(self) -> None:
        unquiet = getattr(self, "_unquiet", None)
        if unquiet is not None:
            unquiet()  # runs _Quiet.release() once, however often it is called

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError("checkpointer is closed", directory=self._dir)

    def _claim_directory(self) -> None:
        """Use ``directory`` only if it is new, empty, or marked as ours.

        A new directory is created and marked now, so that an unusable path fails
        before training starts; an existing one is only read (see :meth:`_become_writer`).
        """
        d = self._dir
        try:
            if d.exists() and not d.is_dir():
                raise CheckpointError("path exists and is not a directory", directory=d)
            if not d.is_dir():
                d.mkdir(parents=True, exist_ok=True)
                self._write_marker()
                return
            marker = d / MARKER_NAME
            if marker.is_file():
                self._check_marker(marker)
                return
            entries = sorted(os.listdir(d))
            if entries:
                shown = ", ".join(repr(e) for e in entries[:3])
                more = f" and {len(entries) - 3} more" if len(entries) > 3 else ""
                raise CheckpointError(
                    f"directory is not empty and was not created by jaxyard's orbax "
                    f"checkpointer (found {shown}{more}, no {MARKER_NAME}); refusing to "
                    f"use it so that nothing in it is overwritten or deleted; "
                    f"use a new or empty directory",
                    directory=d,
                )
        except CheckpointError:
            raise
        except OSError as exc:
            raise CheckpointError(f"cannot use the directory: {describe_exception(exc)}", directory=d) from exc

    def _write_marker(self) -> None:
        _write_json_atomic(
            self._dir / MARKER_NAME,
            {
                "format": MARKER_FORMAT,
                "version": FORMAT_VERSION,
                "note": "checkpoints written by jaxyard (orbax checkpointer); "
                "the directory is managed: old steps are deleted by retention",
            },
        )

    def _check_marker(self, marker: pathlib.Path) -> None:
        try:
            doc = json.loads(marker.read_text())
        except (OSError, ValueError) as exc:
            self._warn(f"{marker} is unreadable ({describe_exception(exc)}); using the directory anyway")
            return
        fmt = doc.get("format") if isinstance(doc, dict) else None
        if fmt != MARKER_FORMAT:
            raise CheckpointError(
                f"directory holds checkpoints of another format ({MARKER_NAME} says "
                f"{fmt!r}, expected {MARKER_FORMAT!r}); refusing to use it",
                directory=self._dir,
            )

    def _become_writer(self, step: int) -> None:
        """Before this process's first save: mark the directory and remove leftovers of
        killed saves. Not done when opening: a reader must not delete a save in progress."""
        if self._writer:
            return
        try:
            if not (self._dir / MARKER_NAME).is_file():
                self._write_marker()
            for name in sorted(os.listdir(self._dir)):
                if _is_tmp_name(name) and (self._dir / name).is_dir():
                    shutil.rmtree(self._dir / name)
        except OSError as exc:
            raise CheckpointError(
                f"cannot prepare the directory for saving: {describe_exception(exc)}",
                directory=self._dir,
                step=step,
            ) from exc
        self._writer = True

    def _report_earlier_failure(self, step: int) -> None:
        """Raise the failure of an earlier background save before saving ``step``."""
        err = self._deferred
        self._deferred = None
        if err is None:
            try:
                self._settle()
            except CheckpointError as settled:
                err = settled
        if err is not None:
            raise CheckpointError(
                f"{err.cause} (reported when saving step {step}, which was not saved)",
                directory=self._dir,
                step=err.step,
            ) from err.__cause__

    def _settle_or_defer(self) -> None:
        """Wait for the pending save; a failure is reported by the next save, wait or close."""
        try:
            self._settle()
        except CheckpointError as err:
            self._deferred = err

    def _save_failed(self, step: int, exc: Exception) -> CheckpointError:
        """Forget the failed save, remove what it left half-written (its temporary
        directory: space a full disk needs back) and describe the failure in one line."""
        self._pending = None
        self._remove_unfinished(step)
        return CheckpointError(
            f"saving failed: {_save_cause(exc)}; earlier checkpoints were left in place",
            directory=self._dir,
            step=step,
        )

    def _remove_unfinished(self, step: int) -> None:
        try:
            leftovers = [p for p in self._dir.glob(f"{step}{TMP_SUFFIX}*") if p.is_dir()]
        except OSError:
            return
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)

    def _settle(self) -> None:
        """Wait for the pending save; make it durable; raise CheckpointError if it failed."""
        if self._pending is None:
            return
        step = self._pending
        try:
            self._mgr.wait_until_finished()
        except Exception as exc:
            raise self._save_failed(step, exc) from exc
        self._pending = None  # only now: the background callback reads it
        final = self._dir / str(step)
        if not final.is_dir():
            raise CheckpointError(
                "saving failed: orbax reported no error but the checkpoint was not "
                "finalized; earlier checkpoints were left in place",
                directory=self._dir,
                step=step,
            )
        try:
            if step in self._synced:
                self._synced.discard(step)
            else:
                _fsync_tree(final)
            _fsync_dir(self._dir)  # the rename
        except OSError as exc:
            raise CheckpointError(
                f"could not flush the checkpoint to disk: {describe_exception(exc)}",
                directory=self._dir,
                step=step,
            ) from exc

    def _sync_before_publish(self) -> None:
        """fsync the pending step's files before orbax renames its directory into
        place (async saves only), so a finished step is a durable one."""
        step = self._pending
        if step is None:
            return
        tmp_dirs = [p for p in self._dir.glob(f"{step}{TMP_SUFFIX}*") if p.is_dir()]
        for tmp in tmp_dirs:
            _fsync_tree(tmp)
        if tmp_dirs:
            self._synced.add(step)

    def _sync_step_list(self) -> None:
        """Make orbax's in-memory step list match the disk before it is consulted.

        Orbax refuses to save a step it believes exists and to delete one it does not
        know; its list goes stale when a save fails (the step stays listed), a damaged
        step is moved aside, or another process adds or removes steps.
        """
        try:
            on_disk = self.steps()
        except CheckpointError:
            return  # the save or delete itself reports the unusable directory
        if sorted(self._mgr.all_steps()) == on_disk:
            return
        try:
            self._mgr.reload()
        except Exception as exc:  # orbax then reports what it cannot do
            self._warn(f"could not re-read the checkpoint list in {self._dir}: {describe_exception(exc)}")

    def _make_room(self, step: int) -> None:
        """Saving a step that exists: refuse if intact, move it aside if damaged."""
        path = self._dir / str(step)
        if not path.exists():
            return
        try:
            self._load(step)
        except _Damaged as d:
            aside = self._dir / f"{step}.damaged"
            n = 1
            while aside.exists():
                n += 1
                aside = self._dir / f"{step}.damaged-{n}"
            try:
                os.rename(path, aside)
            except OSError as exc:
                raise CheckpointError(
                    f"a damaged checkpoint for this step is in the way and could not be "
                    f"moved aside: {describe_exception(exc)}",
                    directory=self._dir,
                    step=step,
                ) from exc
            self._warn(
                f"checkpoint step {step} in {self._dir} was damaged ({d.cause}); "
                f"moved it to {aside.name} and saving again"
            )
            return
        raise CheckpointError(
            "a checkpoint for this step already exists and is intact; not overwriting it",
            directory=self._dir,
            step=step,
        )

    def _normalize_meta(self, step: int, meta: Any) -> dict:
        if not isinstance(meta, Mapping):
            raise CheckpointError(
                f"meta must be a dict, got {type(meta).__name__}", directory=self._dir, step=step
            )
        try:
            return json.loads(json.dumps(dict(meta), default=_json_default, allow_nan=True))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"meta is not JSON-serializable: {describe_exception(exc)}",
                directory=self._dir,
                step=step,
            ) from exc

    def _to_host(self, step: int, arrays: Any) -> dict[str, np.ndarray]:
        """C-contiguous host arrays (device->host transfers started all at once)."""
        if not isinstance(arrays, Mapping):
            raise CheckpointError(
                f"arrays must be a flat dict of path -> array, got {type(arrays).__name__}",
                directory=self._dir,
                step=step,
            )
        for key in arrays:
            if not isinstance(key, str) or not key:
                raise CheckpointError(
                    f"array keys must be non-empty strings, got {key!r}", directory=self._dir, step=step
                )
        for value in arrays.values():  # start all device->host transfers at once
            start = getattr(value, "copy_to_host_async", None)
            if start is not None:
                try:
                    start()
                except Exception:  # only an optimization
                    pass
        out: dict[str, np.ndarray] = {}
        for key, value in arrays.items():
            dtype = getattr(value, "dtype", None)
            if dtype is not None and "key<" in str(dtype):
                raise CheckpointError(
                    f"array {key!r} is a typed PRNG key array; pass jax.random.key_data(...) instead",
                    directory=self._dir,
                    step=step,
                )
            try:
                host = np.asarray(value)
            except Exception as exc:
                raise CheckpointError(
                    f"array {key!r} cannot be copied to host memory: {describe_exception(exc)}",
                    directory=self._dir,
                    step=step,
                ) from exc
            if host.dtype.kind in "OSUV" and host.dtype.name not in _ML_DTYPE_NAMES:
                raise CheckpointError(
                    f"array {key!r} has unsupported dtype {host.dtype}", directory=self._dir, step=step
                )
            # No copy here: orbax's NumpyHandler deep-copies host arrays before
            # save() returns (deepcopy_host_arrays=True), which also detaches a
            # jax CPU array's zero-copy view from its device buffer. The
            # checksum below is taken from these same bytes before that.
            out[key] = host if host.flags.c_contiguous else np.array(host, order="C")
        return out

    def _restore_item(self, step: int, name: str, args: Any, what: str) -> Any:
        try:
            return self._mgr.restore(step, args=ocp.args.Composite(**{name: args}))[name]
        except Exception as exc:  # every failure is damage
            raise _Damaged(f"{what} unreadable ({name}/): {describe_exception(exc)}") from None

    def _load(self, step: int) -> Restored:
        """Restore ``step`` and verify it against its checksum record (raises _Damaged)."""
        if not (self._dir / str(step)).is_dir():
            raise _Damaged("checkpoint directory is missing")
        sums = self._restore_item(step, _SUMS, ocp.args.JsonRestore(), "checksum record")
        entries, meta_crc = _parse_checksums(sums, step)
        meta = self._restore_item(step, _META, ocp.args.JsonRestore(), "meta")
        if not isinstance(meta, dict):
            raise _Damaged(f"meta ({_META}/) is not a JSON object")
        if meta_crc is not None and _json_crc32(meta) != meta_crc:
            raise _Damaged(f"checksum mismatch for meta ({_META}/metadata): edited or corrupted on disk")
        expected = {k for k, e in entries.items() if e.stored}
        state: Any = {}
        if expected:
            state = self._restore_item(step, _STATE, ocp.args.StandardRestore(), "array data")
            if not isinstance(state, Mapping):
                raise _Damaged(f"array data ({_STATE}/) is not a dict of arrays")
        got = set(state)
        if got != expected:
            missing = sorted(expected - got)
            extra = sorted(got - expected)
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
            if extra:
                parts.append(f"unrecorded {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
            raise _Damaged(f"array data does not match the checksum record: {'; '.join(parts)}")
        arrays: dict[str, np.ndarray] = {}
        bad: list[str] = []
        for key, entry in entries.items():
            if entry.stored:
                a = np.asarray(state[key])
            else:
                a = np.zeros(entry.shape, _dtype_from_name(entry.dtype))
            if tuple(a.shape) != entry.shape:
                raise _Damaged(
                    f"array {key!r} has shape {tuple(a.shape)}, checksum record says {entry.shape}"
                )
            if a.dtype.name != entry.dtype:
                raise _Damaged(f"array {key!r} has dtype {a.dtype.name}, checksum record says {entry.dtype}")
            if _crc32(a) != entry.crc32:
                bad.append(key)
            arrays[key] = a
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise _Damaged(f"checksum mismatch for array {bad[0]!r}{more}: data corrupted on disk")
        return Restored(step=step, arrays=arrays, meta=meta)


_ML_DTYPE_NAMES = frozenset(
    {
        "bfloat16",
        "float8_e4m3fn",
        "float8_e4m3b11fnuz",
        "float8_e4m3fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "float8_e3m4",
        "float8_e4m3",
        "float8_e8m0fnu",
        "float4_e2m1fn",
        "int2",
        "int4",
        "uint2",
        "uint4",
    }
)


def _this_process_alone() -> ocp.options.MultiprocessingOptions:
    import jax

    me = jax.process_index()
    return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})


def _steps_text(steps: list[int]) -> str:
    if not steps:
        return "none"
    if len(steps) > 8:
        return ", ".join(map(str, steps[:3])) + ", ..., " + ", ".join(map(str, steps[-3:]))
    return ", ".join(map(str, steps))


def _parse_checksums(doc: Any, step: int) -> tuple[dict[str, _Entry], int | None]:
    """The array entries of a checksum record and its meta crc32 (None in a version 1 record),
    after checking the record's own crc32 and that it was written for ``step``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("arrays"), dict):
        raise _Damaged(f"checksum record ({_SUMS}/) is malformed")
    if doc.get("algorithm", CHECKSUM_ALGORITHM) != CHECKSUM_ALGORITHM:
        raise _Damaged(f"checksum record uses unknown algorithm {doc.get('algorithm')!r}")
    version = doc.get("version", 1)
    meta_crc = None
    if version != 1:
        if version != RECORD_VERSION:
            raise _Damaged(
                f"checksum record ({_SUMS}/) has version {version!r}; this jaxyard reads 1 and {RECORD_VERSION}"
            )
        recorded = doc.get("record_crc32")
        if not _is_int(recorded) or _json_crc32({k: v for k, v in doc.items() if k != "record_crc32"}) != recorded:
            raise _Damaged(f"checksum mismatch for the checksum record ({_SUMS}/metadata): edited or corrupted on disk")
        saved_step, meta_crc = doc.get("step"), doc.get("meta_crc32")
        if not _is_int(saved_step) or not _is_int(meta_crc):
            raise _Damaged(f"checksum record ({_SUMS}/) is malformed: no step or meta_crc32")
        if saved_step != step:
            raise _Damaged(
                f"the checkpoint holds step {saved_step}, not {step}: its directory was renamed or copied from "
                f"step {saved_step}"
            )
    out = {}
    try:
        for key, e in doc["arrays"].items():
            shape = tuple(int(d) for d in e["shape"])
            crc = e[CHECKSUM_ALGORITHM]
            if isinstance(crc, bool) or not isinstance(crc, int):
                raise TypeError("crc32 is not an integer")
            out[key] = _Entry(shape=shape, dtype=str(e["dtype"]), crc32=crc, stored=bool(e.get("stored", True)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _Damaged(f"checksum record ({_SUMS}/) is malformed: {describe_exception(exc)}") from None
    return out, meta_crc


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
