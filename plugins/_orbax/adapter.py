"""The orbax checkpointer itself: :class:`OrbaxCheckpointer`, jaxyard's storage on orbax's
CheckpointManager (the package docstring describes the directory and what a load verifies)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxyard.core.store.checkpoint import CheckpointError, Restored, describe_exception, warn_checkpoint
from jaxyard.core.store.integrity import checksum_record, read_checksums
from jaxyard.core.store.rundir import write_atomic
from jaxyard.plugins._orbax import arguments, durable, quiet
from jaxyard.plugins._orbax.oserrors import save_cause

if TYPE_CHECKING:  # pragma: no cover
    import orbax.checkpoint as ocp

__all__ = ["FORMAT_VERSION", "MARKER_FORMAT", "MARKER_NAME", "TMP_SUFFIX", "OrbaxCheckpointer", "prefetch"]

MARKER_NAME = "jaxyard-checkpoints.json"
MARKER_FORMAT = "jaxyard.orbax"
FORMAT_VERSION = 1  # of the directory (marker); unchanged by checksum record version 2
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's name for a step directory being written

# the items of a step: orbax saves each in its own sub-directory
_STATE = "state"
_META = "meta"
_SUMS = "checksums"


class _Damaged(Exception):
    """A checkpoint failed verification; ``cause`` is one line."""

    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


def _is_step_name(name: str) -> bool:
    return name.isdigit() and name.isascii() and str(int(name)) == name


def _is_tmp_name(name: str) -> bool:
    """``<step>.orbax-checkpoint-tmp[-<timestamp>]``: a step directory orbax has not finished."""
    head, sep, _ = name.partition(TMP_SUFFIX)
    return bool(sep) and _is_step_name(head)


def _steps_text(steps: list[int]) -> str:
    if not steps:
        return "none"
    if len(steps) > 8:
        return ", ".join(map(str, steps[:3])) + ", ..., " + ", ".join(map(str, steps[-3:]))
    return ", ".join(map(str, steps))


_prefetching: threading.Thread | None = None


def prefetch() -> None:
    """Import orbax (~0.14 s on 2 cores) in a background thread, once: the engine's epochs leave a
    core idle on the CPU, and a checkpointer opens orbax only at its first save or load."""
    global _prefetching
    if _prefetching is None:
        _prefetching = threading.Thread(target=_import_quietly, name="jaxyard-orbax-import", daemon=True)
        _prefetching.start()


def _import_quietly() -> None:
    try:
        import orbax.checkpoint  # noqa: F401
    except Exception:  # noqa: S110 - the first use imports it again and reports the failure
        pass


def _orbax() -> Any:
    """``orbax.checkpoint``, after any :func:`prefetch` of it has finished."""
    if _prefetching is not None:
        _prefetching.join()
    import orbax.checkpoint as ocp

    return ocp


def _this_process_alone() -> ocp.options.MultiprocessingOptions:
    import jax

    me = jax.process_index()
    return _orbax().options.MultiprocessingOptions(primary_host=me, active_processes={me})


class OrbaxCheckpointer:
    """Checkpointer on orbax's CheckpointManager; see the package docstring.

    Implements :class:`jaxyard.core.store.checkpoint.Checkpointer`: ``save``, ``steps``,
    ``load(step)``, ``delete(step)``, ``wait``, ``close``. It ranks and retains
    nothing; wrap it in :class:`jaxyard.core.store.policy.CheckpointPolicy` for that.

    ``warn`` receives one-line notes about things it worked around (a damaged step
    moved aside, an unreadable marker); by default they are issued as
    :class:`~jaxyard.core.store.checkpoint.CheckpointWarning` warnings, which reach stderr.
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
        self._warn = warn or warn_checkpoint
        self._pending: int | None = None  # step of a save not yet settled
        self._synced: set[int] = set()  # steps whose files were fsynced before publication
        self._deferred: CheckpointError | None = None  # failure seen by load()/delete()
        self._writer = False  # set by the first save(): leftovers cleaned, marker written
        self._closed = False

        self._claim_directory()
        self._manager: Any = None  # orbax's CheckpointManager, opened by the first operation that needs it
        quiet.close_at_exit(self)

    @property
    def _mgr(self) -> Any:
        return self._open()

    def _open(self) -> Any:
        """orbax's CheckpointManager, opened the first time (CheckpointError if it cannot be)."""
        if self._manager is None:
            self._check_open()
            self._manager = self._open_manager()
        return self._manager

    def _open_manager(self) -> Any:
        """orbax's CheckpointManager on the directory (importing orbax: a run opens it at its first save)."""
        ocp = _orbax()
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
        quiet.Quiet.acquire()  # released by close(), or when this object is collected unclosed
        self._unquiet = weakref.finalize(self, quiet.Quiet.release)
        try:
            return ocp.CheckpointManager(self._dir, options=options, item_names=(_STATE, _META, _SUMS))
        except Exception as exc:
            self._release_quiet()
            raise CheckpointError(f"cannot open checkpoints: {describe_exception(exc)}", directory=self._dir) from exc

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
        step = arguments.as_step(step)
        self._report_earlier_failure(step)
        self._open()  # first: a failure to open orbax is that, never a step moved aside as damaged
        meta_doc = arguments.json_meta(meta, step=step, directory=self._dir)
        host = arguments.host_arrays(arrays, step=step, directory=self._dir)
        sums_doc = checksum_record(step, host, meta_doc)
        stored = {k: a for k, a in host.items() if a.size > 0}

        self._become_writer(step)
        self._make_room(step)
        args = _orbax().args
        items: dict[str, Any] = {_META: args.JsonSave(meta_doc), _SUMS: args.JsonSave(sums_doc)}
        if stored:
            items[_STATE] = args.StandardSave(stored)
        self._sync_step_list()
        try:
            # force=True: without it orbax silently skips (returns False) when a
            # save is still in progress or step <= latest step.
            self._pending = step
            self._mgr.save(step, args=args.Composite(**items), force=True)
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
        step = arguments.as_step(step)
        self._settle_or_defer()
        self._open()  # first: a failure to open orbax is that, never damage of the step
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
        step = arguments.as_step(step)
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
            quiet.forget(self)
            try:
                failure = self._shut_down_orbax() if self._manager is not None else None
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
            unquiet()  # runs Quiet.release() once, however often it is called

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
        marker = {
            "format": MARKER_FORMAT,
            "version": FORMAT_VERSION,
            "note": "checkpoints written by jaxyard (orbax checkpointer); the directory is managed: old steps are deleted by retention",
        }
        write_atomic(self._dir / MARKER_NAME, json.dumps(marker, indent=1, sort_keys=True))  # jaxyard's one durable write

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
            f"saving failed: {save_cause(exc)}; earlier checkpoints were left in place",
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
            if step in self._synced:  # only orbax's bookkeeping, written after the items were fsynced
                self._synced.discard(step)
                durable.fsync_files(final)
            else:
                durable.fsync_tree(final)
            durable.fsync_dir(self._dir)  # the rename
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
            durable.fsync_tree(tmp)
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

    def _restore_item(self, step: int, name: str, args: Any, what: str) -> Any:
        try:
            return self._mgr.restore(step, args=_orbax().args.Composite(**{name: args}))[name]
        except Exception as exc:  # every failure is damage
            raise _Damaged(f"{what} unreadable ({name}/): {describe_exception(exc)}") from None

    def _load(self, step: int) -> Restored:
        """Restore ``step`` item by item and verify it against its checksum record (raises _Damaged).

        The record is read first and ``meta`` checked against it before the arrays are read, so an
        edited ``meta`` or a step directory renamed to another step is named as such.
        """
        if not (self._dir / str(step)).is_dir():
            raise _Damaged("checkpoint directory is missing")
        record = self._restore_item(step, _SUMS, _orbax().args.JsonRestore(), "checksum record")
        try:
            checksums = read_checksums(record, step)
            meta = self._restore_item(step, _META, _orbax().args.JsonRestore(), "meta")
            if not isinstance(meta, dict):
                raise _Damaged(f"meta ({_META}/) is not a JSON object")
            checksums.check_meta(meta)
            state: Any = {}
            if checksums.stored():
                state = self._restore_item(step, _STATE, _orbax().args.StandardRestore(), "array data")
                if not isinstance(state, Mapping):
                    raise _Damaged(f"array data ({_STATE}/) is not a dict of arrays")
            arrays = {**checksums.unstored(), **{k: np.asarray(v) for k, v in state.items()}}
            checksums.check_arrays(arrays)
        except CheckpointError as err:  # the integrity record's verdict
            raise _Damaged(err.cause) from None
        return Restored(step=step, arrays={k: arrays[k] for k in checksums.arrays}, meta=meta)
